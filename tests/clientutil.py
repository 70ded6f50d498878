"""Helpers for client tests: a real `boxbox server` subprocess and client configs around it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

from boxbox.crypto.keys import create_keys_file, load_keys
from boxbox.objects.directory import DELETED, DIR, FILE, OLD, Directory, open_entry
from boxbox.objects.file import decode_file
from boxbox.s3.client import S3Settings
from boxbox.wire import tls
from boxbox.wire.client import Client

from tests.conftest import boxbox_command, boxbox_env, free_port, run_boxbox, wait_listening
from tests.serverutil import s3_section

ROOT_DIR = 1


class StoreServer:
    """A `boxbox server --foreground` on 127.0.0.1 with one disc set, or given `s3` (a bucket's
    settings) with S3 store "0" on that bucket; stopped by PID."""

    def __init__(self, tmp: Path, test_ca: Any, s3: S3Settings | None = None, prefix: str = "store",
                 extra: str = "") -> None:
        self.tmp = tmp
        self.ca = test_ca
        self.port = free_port()
        self.config = tmp / "server.conf"
        self.log = tmp / "server.log"
        disc = tmp / "disc"
        disc.mkdir(exist_ok=True)
        sd = test_ca.server_dir
        self.config.write_text(textwrap.dedent(f"""\
            [server]
            listen = 127.0.0.1
            port = {self.port}
            certificate = {sd / 'server.crt'}
            private_key = {sd / 'server.key'}
            ca_certificate = {test_ca.ca_cert}
            account_database = {tmp / 'accounts.db'}
            idle_timeout = 30s
            read_timeout = 10s
            log_level = info
            """) + textwrap.dedent(extra) + (textwrap.dedent(f"""
            [discset 0]
            directories = {disc}
            """) if s3 is None else s3_section(s3, tmp, prefix=prefix)))
        self.proc: subprocess.Popen[bytes] | None = None
        self._next_account = 0xC000

    def new_account(self, soft: str = "500M", hard: str = "600M") -> int:
        """A fresh account (its own client certificate): one per test, since each has its own client."""
        self._next_account += 1
        self.accounts("create", f"{self._next_account:x}", "--soft", soft, "--hard", hard)
        return self._next_account

    def accounts(self, *args: str, exit_code: int = 0) -> subprocess.CompletedProcess[str]:
        return run_boxbox("accounts", "--config", str(self.config), *args, exit_code=exit_code)

    def start(self) -> None:
        args = [*boxbox_command(), "server", "--config", str(self.config), "--foreground"]
        if os.geteuid() == 0:
            args.append("--allow-root")
        self.proc = subprocess.Popen(args, env=boxbox_env(), stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"))
        wait_listening(self.proc, self.port, self.log)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(20)

    def sessions(self) -> int:
        """Sessions logged so far (one line per connection that ended)."""
        time.sleep(0.3)  # the line is written when the session's thread ends
        return sum(1 for line in self.log.read_text().splitlines() if " session " in line)

    def connect(self, account: int) -> Client:
        d = self.ca.client_dir(account)
        ctx = tls.client_context(d / "client.crt", d / "client.key", d / "ca.crt")
        c = Client.connect("127.0.0.1", self.port, ctx, server_hostname="localhost", timeout=15)
        c.login(read_only=True)
        return c


def client_config(tmp: Path, server: StoreServer, account: int, location: Path, *, name: str = "client",
                  extra: str = "", location_extra: str = "", keys: Path | None = None, lazy: bool = False) -> Path:
    """A client config in tmp/NAME (keys file made unless given); returns its path."""
    d = server.ca.client_dir(account)
    base = tmp / name
    base.mkdir(exist_ok=True)
    if keys is None:
        keys = base / "keys.dat"
        if not keys.exists():
            create_keys_file(keys)
    conf = base / "client.conf"
    conf.write_text(textwrap.dedent(f"""\
        [client]
        server = localhost
        port = {server.port}
        account = {account:x}
        certificate = {d / 'client.crt'}
        private_key = {d / 'client.key'}
        ca_certificate = {d / 'ca.crt'}
        keys_file = {keys}
        data_directory = {base / 'data'}
        automatic_backup = {'yes' if lazy else 'no'}
        log_level = info
        """) + textwrap.dedent(extra) + textwrap.dedent(f"""
        [location home]
        path = {location}
        """) + textwrap.dedent(location_extra))
    return conf


def run_once(conf: Path, exit_code: int = 0, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_boxbox("client", "--config", str(conf), "--once", exit_code=exit_code, timeout=timeout)


def store_tree(server: StoreServer, account: int, keys_file: Path, location: str = "home"
               ) -> dict[bytes, tuple[str, bytes | None, Any]]:
    """What the store holds for a location: path -> (kind, content or None, attributes)."""
    keys = load_keys(keys_file)
    out: dict[bytes, tuple[str, bytes | None, Any]] = {}
    with server.connect(account) as c:
        root = Directory.parse(c.list_directory(ROOT_DIR, flags_not_set=OLD | DELETED))
        loc_id = None
        for e in root.entries:
            name, _ = open_entry(keys, ROOT_DIR, e)
            if name == location.encode():
                loc_id = e.object_id
        if loc_id is None:
            return out

        def walk(dir_id: int, prefix: bytes) -> None:
            d = Directory.parse(c.list_directory(dir_id, flags_not_set=OLD | DELETED))
            for e in d.entries:
                name, attrs = open_entry(keys, dir_id, e)
                path = prefix + b"/" + name if prefix else name
                if e.flags & DIR:
                    out[path] = ("dir", None, attrs)
                    walk(e.object_id, path)
                elif e.flags & FILE:
                    import io
                    sink = io.BytesIO()
                    decode_file(keys, c.get_file(dir_id, e.object_id), sink, container_id=dir_id, name=name)
                    out[path] = ("file", sink.getvalue(), attrs)
        walk(loc_id, b"")
    return out


def local_tree(root: Path) -> dict[bytes, tuple[str, bytes | None]]:
    """The same view of a local tree (regular files' contents, other kinds as their type)."""
    import stat as st_mod
    out: dict[bytes, tuple[str, bytes | None]] = {}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, broot)
            st = os.lstat(full)
            if st_mod.S_ISDIR(st.st_mode):
                out[rel] = ("dir", None)
            elif st_mod.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    out[rel] = ("file", f.read())
            else:
                out[rel] = ("file", b"")
    return out


class Daemon:
    def __init__(self, conf: Path, log: Path) -> None:
        self.conf = conf
        self.log = log
        self.proc = subprocess.Popen([*boxbox_command(), "client", "--config", str(conf), "--foreground"],
                                     env=boxbox_env(), stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
        sock = conf.parent / "data" / "command.sock"
        deadline = time.monotonic() + 20
        while not sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"daemon did not start: {log.read_text()}")
            time.sleep(0.05)
        self.socket = sock

    def ctl(self, *args: str, exit_code: int = 0, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_boxbox("ctl", "--config", str(self.conf), *args, exit_code=exit_code, timeout=timeout)

    def status(self) -> dict[str, Any]:
        return json.loads(self.ctl("status", "--json").stdout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
