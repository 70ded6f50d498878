"""The daemon's pieces without a server: notifications, the command socket's access checks, config checks."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from pathlib import Path

import pytest

from boxbox.backup.control import ControlServer, request
from boxbox.backup.daemon import Daemon
from boxbox.crypto.keys import create_keys_file
from boxbox.errors import ConfigError, InUse, NotFound


def _conf(tmp: Path, extra: str = "") -> Path:
    (tmp / "tree").mkdir(exist_ok=True)
    if not (tmp / "keys.dat").exists():
        create_keys_file(tmp / "keys.dat")
    conf = tmp / "client.conf"
    conf.write_text(f"""\
[client]
server = localhost
account = 1
certificate = {tmp / 'c.crt'}
private_key = {tmp / 'c.key'}
ca_certificate = {tmp / 'ca.crt'}
keys_file = {tmp / 'keys.dat'}
data_directory = {tmp / 'state'}
{extra}
[location home]
path = {tmp / 'tree'}
""")
    return conf


def test_repeated_error_events_are_notified_once(tmp_path: Path) -> None:
    log = tmp_path / "events"
    script = tmp_path / "notify.sh"
    script.write_text(f"#!/bin/sh\necho \"$1 $BOXBOX_DETAIL\" >> {log}\n")
    script.chmod(0o755)
    d = Daemon(_conf(tmp_path, f"notify_script = {script}\n"))
    for _ in range(3):
        d.notify("store-full", "the store is full")
    d.notify("read-error", "home:x: cannot read")
    d.notify("backup-ok")
    d.notify("store-full", "the store is full")  # again after a good run
    assert log.read_text().splitlines() == ["store-full the store is full", "read-error home:x: cannot read",
                                            "backup-ok ", "store-full the store is full"]
    log.unlink()
    d = Daemon(_conf(tmp_path, f"notify_script = {script}\nnotify_repeats = yes\n"))
    d.notify("store-full", "again")
    d.notify("store-full", "again")
    assert log.read_text().splitlines() == ["store-full again"] * 2


def test_config_checks(tmp_path: Path) -> None:
    conf = _conf(tmp_path)
    conf.write_text(conf.read_text().replace(str(tmp_path / "tree"), str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="location home.path"):
        Daemon(conf)
    conf.write_text(conf.read_text().split("[location home]")[0])
    with pytest.raises(ConfigError, match="section \\[location NAME\\] is missing"):
        Daemon(conf)


def test_keys_checked_at_start_unless_deferred(tmp_path: Path) -> None:
    """The daemon checks the keys file at start-up; `client --once` (defer_keys) only when a change needs it."""
    conf = _conf(tmp_path)
    (tmp_path / "keys.dat").unlink()
    with pytest.raises(ConfigError, match="keys file .* does not exist"):
        Daemon(conf)
    d = Daemon(conf, defer_keys=True)
    with pytest.raises(ConfigError, match="keys file .* does not exist"):
        d.keys
    made = create_keys_file(tmp_path / "keys.dat")
    assert d.keys.fingerprint == made.fingerprint


def test_socket_mode_stale_socket_and_second_daemon(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on: a daemon that died
    server = ControlServer(path, lambda req: {"ok": True, "echo": req["command"]})
    server.start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert request(path, "status")["echo"] == "status"
        with pytest.raises(InUse, match="another client daemon is running"):
            ControlServer(path, lambda req: {})
    finally:
        server.close()
    with pytest.raises(NotFound, match="no client daemon is running"):
        request(path, "status")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_peer_of_another_uid_is_refused() -> None:
    tmp = Path(tempfile.mkdtemp())  # pytest's tmp_path is under a 0700 directory of root
    path = tmp / "ctl.sock"
    calls: list[str] = []
    server = ControlServer(path, lambda req: calls.append(req["command"]) or {"ok": True})  # type: ignore[func-returns-value]
    server.start()
    try:
        os.chmod(path, 0o777)  # let the other user reach the socket: only the uid check stands in its way
        os.chmod(tmp, 0o755)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: become nobody, ask the daemon to terminate, report its reply
            try:
                os.setuid(65534)
                reply = request(path, "terminate", timeout=10)
                os.write(w, repr(reply).encode())
            except BaseException as e:
                os.write(w, f"child failed: {e!r}".encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            out = f.read()
        os.waitpid(pid, 0)
        assert "may not control this daemon" in out
        assert calls == []
    finally:
        server.close()
        os.rmdir(tmp)
