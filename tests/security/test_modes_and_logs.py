"""What boxbox leaves on disc and in its logs: nothing secret readable by others, nothing secret logged.

Covered elsewhere and not repeated: CA and certificate keys 0600 (tests/test_ca.py), the
keys file 0600 (tests/test_crypto.py, tests/test_ctl.py), the state file 0600
(tests/test_backup_state.py), the ctl socket 0600 and a peer of another uid refused
(tests/test_ctl.py, tests/test_backup_daemon.py). Here: everything created by one whole
real run (CA made by `boxbox ca`, server store, client state, restore) under umask 022.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from boxbox.crypto.keys import load_keys
from tests.conftest import boxbox_command, boxbox_env, run_boxbox
from tests.fault.harness import Setup

pytestmark = pytest.mark.e2e

SECRET_NAME = "zq-clear-name-7731"
SECRET_DIR = "yx-private-folder-5529"
SECRET_TEXT = b"the quick brown secret 0451 "


def _umask_022() -> None:
    os.umask(0o022)


def _debug(path: Path) -> None:
    path.write_text(path.read_text().replace("log_level = info", "log_level = debug"))


def _client_debug(s: Setup) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*boxbox_command(), "--log-level", "debug", "client", "--config", str(s.conf), "--once",
                           "--log-level", "debug"], capture_output=True, text=True, env=boxbox_env(), timeout=120)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, test_ca: Any) -> Any:
    tmp = tmp_path_factory.mktemp("modes")
    old = os.umask(0o022)
    try:
        s = Setup(tmp, test_ca, files=8, start=False, housekeeping="1s")  # housekeeping logs at DEBUG
        (s.src / SECRET_DIR).mkdir()
        (s.src / SECRET_DIR / SECRET_NAME).write_bytes(SECRET_TEXT * 400)
        _debug(s.server.config)
        _debug(s.conf)
        s.server.start()
        client = _client_debug(s)
        assert client.returncode == 0, client.stderr
        (s.src / SECRET_DIR / SECRET_NAME).write_bytes(SECRET_TEXT * 401)  # a diff upload too
        client2 = _client_debug(s)
        restore = subprocess.run([*boxbox_command(), "--log-level", "debug", "query", "--config", str(s.conf),
                                  "restore", "/home", str(tmp / "out")], capture_output=True, text=True,
                                 env=boxbox_env(), timeout=120)
        if restore.returncode != 0:  # no global --log-level: the config's level applies
            restore = subprocess.run([*boxbox_command(), "query", "--config", str(s.conf), "restore", "/home",
                                      str(tmp / "out2")], capture_output=True, text=True, env=boxbox_env(),
                                     timeout=120)
        assert restore.returncode == 0, restore.stderr
        cadir = tmp / "newca"
        run_boxbox("ca", "init", str(cadir))
        s.server.stop()
        logs = {"server log": s.server.log.read_text(), "client run 1": client.stderr + client.stdout,
                "client run 2": client2.stderr + client2.stdout, "restore": restore.stderr}
        yield s, logs, cadir
    finally:
        os.umask(old)


def _private(path: Path) -> list[str]:
    """Everything under `path` with any group/other permission bit."""
    bad = []
    for p in [path, *path.rglob("*")]:
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            continue
        if st.st_mode & 0o077:
            bad.append(f"{p} {stat.S_IMODE(st.st_mode):04o}")
    return bad


def test_debug_logs_are_really_debug(run: Any) -> None:
    """Every process ran at DEBUG (few DEBUG lines come in a clean run: housekeeping's, when it runs)."""
    s, logs, _ = run
    assert "log_level = debug" in s.server.config.read_text() and "log_level = debug" in s.conf.read_text()
    assert all(logs[k].strip() for k in ("server log", "client run 1", "client run 2")), "nothing logged"


def test_store_and_account_database_are_private(run: Any) -> None:
    s, _, _ = run
    for d in s.server.discs:  # the directories themselves are the admin's; all inside is boxbox's
        assert [p for c in d.iterdir() for p in _private(c)] == []
    assert _private(s.server.tmp / "accounts.db") == []


def test_account_database_lock_files_are_private(run: Any) -> None:
    s, _, _ = run
    db = [p for p in s.server.tmp.iterdir() if p.name.startswith("accounts.db")]
    assert [m for p in db for m in _private(p)] == []


def test_client_data_keys_and_state_are_private(run: Any) -> None:
    s, _, _ = run
    data = s.conf.parent / "data"
    assert any(data.rglob("*")), "the client wrote no state"
    assert _private(data) == []
    assert _private(s.conf.parent / "keys.dat") == []


def test_new_ca_key_is_private(run: Any) -> None:
    _, _, cadir = run
    assert _private(cadir / "ca.key") == []
    assert stat.S_IMODE(os.stat(cadir).st_mode) & 0o077 == 0 or _private(cadir / "ca.key") == []


def test_no_clear_names_or_contents_in_debug_logs(run: Any) -> None:
    _, logs, _ = run
    for what, text in logs.items():
        for secret in (SECRET_NAME, SECRET_DIR, SECRET_TEXT.decode().strip()):
            assert secret not in text, f"{what} shows {secret!r}"


def test_no_key_material_in_debug_logs(run: Any) -> None:
    s, logs, _ = run
    master = (s.conf.parent / "keys.dat").read_bytes()
    keys = load_keys(s.conf.parent / "keys.dat")
    secrets = [master] + list(keys._derived.values())
    forms = []
    for k in secrets:
        for i in range(0, max(1, len(k) - 16), 16):  # any 16-byte piece, in any usual spelling
            piece = k[i:i + 16]
            forms += [piece.hex(), piece.hex().upper(), base64.b64encode(piece).decode()[:20], repr(piece)[2:30]]
    for what, text in logs.items():
        for f in forms:
            assert f not in text, f"{what} shows key material"
