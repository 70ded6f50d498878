"""`boxbox ctl`: control a running client daemon (bbackupctl) over its command socket.

Exit status: 0 on success; 1 when the daemon reports a failure (for `sync-and-wait` and
`wait-for-end`, a run that failed); a daemon that is not running is one clear line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

COMMANDS = {
    "status": "state, last run, next run, bytes and files uploaded, errors",
    "sync": "start a backup run now (snapshot mode: the only way one starts)",
    "force-sync": "start a run now, ignoring sync_allow_script and file ages; takes the account over "
                  "after a store-marker pause",
    "sync-and-wait": "start a run and wait for its end; exit 1 if it failed",
    "wait-for-sync": "wait until the next run starts",
    "wait-for-end": "wait until the current (or next) run ends; exit 1 if it failed",
    "reload": "re-read the config file",
    "terminate": "stop the daemon (a run in progress stops cleanly)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="/etc/boxbox/client.conf", help="client config file (for its socket)")
    parser.add_argument("--socket", default=None, help="command socket path (instead of reading --config)")
    parser.add_argument("--json", action="store_true", help="status: machine-readable output")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND",
                        help="; ".join(f"{k}: {v}" for k, v in COMMANDS.items()))


def _when(t: float | None) -> str:
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _size(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _print_status(reply: dict[str, Any]) -> None:
    print(f"state: {reply['state']} ({reply['mode']} mode, pid {reply['pid']})")
    if reply.get("paused"):
        print(f"paused: {reply['paused']}")
    print(f"next run: {_when(reply.get('next_run')) if reply.get('next_run') else 'on `boxbox ctl sync`'}")
    last = reply.get("last_run")
    if last:
        outcome = "ok" if last["ok"] else f"FAILED: {last['error']}"
        print(f"last run: {_when(last['started'])} - {_when(last['finished'])}, {outcome}")
        print(f"  files uploaded: {last['files_uploaded']} ({last['diffs']} as diffs), moved: {last['moved']}, "
              f"deleted: {last['deleted']}, attributes: {last['attributes_changed']}, waiting: {last['waiting']}")
        print(f"  bytes sent: {last['bytes_sent']}")
        for err in last["read_errors"] + last["upload_errors"]:
            print(f"  error: {err}")
    else:
        print("last run: none yet")
    print(f"last successful run: {_when(reply.get('last_success'))}")
    usage = reply.get("store_usage")
    if usage:
        print(f"store usage at last login ({_when(usage['at'])}): {_size(usage['used'])} of "
              f"{_size(usage['soft_limit'])} soft, {_size(usage['hard_limit'])} hard limit")
    t = reply["totals"]
    print(f"since start: {t['runs']} runs ({t['failed_runs']} failed), {t['files_uploaded']} files, "
          f"{t['bytes_sent']} bytes sent")


def main(args: argparse.Namespace) -> int:
    from boxbox.backup.control import request

    if args.socket:
        path = Path(args.socket)
    else:
        from boxbox import config
        from boxbox.backup.daemon import socket_path

        path = socket_path(config.load(args.config, "client"))
    reply = request(path, args.command)
    if args.command == "status":
        if args.json:
            json.dump({k: v for k, v in reply.items() if k != "ok"}, sys.stdout, indent=1)
            print()
        else:
            _print_status(reply)
        return 0
    if not reply.get("ok"):
        sys.stderr.write(f"boxbox: {args.command}: {reply.get('error') or 'failed'}\n")
        return 1
    run = reply.get("run")
    if run is not None:
        print(f"run ok: {run['files_uploaded']} files uploaded, {run['bytes_sent']} bytes sent")
    else:
        print(reply.get("message", "ok"))
    return 0
