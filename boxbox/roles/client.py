"""`boxbox client`: the backup daemon (bbackupd), its one-shot mode, and `init`.

`boxbox client init --config FILE` prepares a new client: the keys file, a private key and
a certificate request for the CA, the data directory, and a check of the config.
`boxbox client --config FILE` runs the daemon (lazy or snapshot mode, see
boxbox/backup/daemon.py); `--once` runs one snapshot backup in the foreground and exits
with its status (0 ok, 1 failed).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from boxbox import config, logs
from boxbox.daemon import running

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["init"],
                        help="init: make the keys file and a key + certificate request, check the config")
    parser.add_argument("--config", default="/etc/boxbox/client.conf", help="client config file")
    parser.add_argument("--foreground", action="store_true", help="do not detach; log to stderr (systemd)")
    parser.add_argument("--once", action="store_true",
                        help="run one snapshot backup in the foreground and exit with its status")
    parser.add_argument("--log-level", choices=sorted(logs.LEVELS), default=None, help="override [client] log_level")


def _init(path: str) -> int:
    from boxbox.ca.authority import make_request
    from boxbox.ca.names import parse_account
    from boxbox.crypto.keys import create_keys_file, load_keys

    cfg = config.load(path, "client")
    c = cfg["client"]
    account = parse_account(c["account"])
    keys_file: Path = c["keys_file"]
    if keys_file.exists():
        keys = load_keys(keys_file)
        print(f"keys file {keys_file} already exists (fingerprint {keys.fingerprint}); kept")
    else:
        keys_file.parent.mkdir(parents=True, exist_ok=True)
        keys = create_keys_file(keys_file)
        print(f"created keys file {keys_file} (fingerprint {keys.fingerprint})")
        print("  keep a copy of it OFF this machine: without it no backup can be restored")
    key: Path = c["private_key"]
    if key.exists():
        print(f"private key {key} already exists; kept")
    else:
        csr = make_request(account, key.parent)
        made = key.parent / "client.key"
        if made != key:
            os.replace(made, key)
        print(f"created private key {key} and certificate request {csr}")
        print(f"  have the CA sign it: boxbox ca sign-client CADIR {account:x} --csr {csr.name} --out DIR; "
              f"put DIR/client.crt at {c['certificate']} and the CA's ca.crt at {c['ca_certificate']}")
    data: Path = c["data_directory"]
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    from boxbox.backup.daemon import load_config

    load_config(path)
    missing = [str(p) for p in (c["certificate"], c["ca_certificate"]) if not Path(p).exists()]
    if missing:
        print(f"config {path} is valid; still missing: {', '.join(missing)}")
    else:
        print(f"config {path} is valid; start the daemon with: boxbox client --config {path}")
    return 0


def main(args: argparse.Namespace) -> int:
    if args.action == "init":
        return _init(args.config)
    from boxbox.backup.daemon import Daemon, socket_path

    daemon = Daemon(args.config, defer_keys=args.once)
    settings = daemon.cfg["client"]
    level = args.log_level or args.global_log_level or settings["log_level"]
    if args.once:
        logs.configure(level, "stderr")
        result = daemon.run_once(force=True)
        if not result.ok:
            sys.stderr.write(f"boxbox: backup run failed: {result.error}\n")
            return 1
        return 0
    from boxbox.backup.control import ControlServer

    logs.configure(level, "stderr" if args.foreground else settings["log"])
    control = ControlServer(socket_path(daemon.cfg), daemon.handle)
    with running(args.foreground, settings["pid_file"]):
        signal.signal(signal.SIGTERM, daemon.stop)
        signal.signal(signal.SIGINT, daemon.stop)
        signal.signal(signal.SIGHUP, daemon.request_reload)
        control.start()
        log.info("client daemon started (%s mode), command socket %s", "lazy" if daemon.lazy else "snapshot",
                 control.path)
        try:
            daemon.loop()
        finally:
            control.close()
            log.info("client daemon stopped")
    return 0
