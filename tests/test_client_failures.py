"""The client when things go wrong: store full, two clients on one account, server or client killed mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.clientutil import Daemon, StoreServer, client_config, local_tree, run_once, store_tree
from tests.conftest import boxbox_command, boxbox_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, test_ca: Any) -> Iterator[StoreServer]:
    srv = StoreServer(tmp_path_factory.mktemp("fserver"), test_ca)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


def _same(server: StoreServer, account: int, keys: Path, tree: Path) -> None:
    stored = {p: (kind, data) for p, (kind, data, _) in store_tree(server, account, keys).items()}
    assert stored == local_tree(tree)


def _tree(root: Path, files: int, size: int) -> Path:
    root.mkdir()
    for i in range(files):
        (root / f"f{i:03d}").write_bytes(os.urandom(size))
    return root


def test_store_full_notifies_and_resumes_after_setlimit(server: StoreServer, tmp_path: Path) -> None:
    account = server.new_account(soft="1M", hard="1M")
    tree = _tree(tmp_path / "tree", 6, 300_000)
    events = tmp_path / "events"
    script = tmp_path / "notify.sh"
    script.write_text(f"#!/bin/sh\necho \"$1\" >> {events}\n")
    script.chmod(0o755)
    conf = client_config(tmp_path, server, account, tree, extra=f"notify_script = {script}\n")
    err = run_once(conf, exit_code=1).stderr
    assert "store is full" in err
    assert "store-full" in events.read_text().split()
    server.accounts("setlimit", f"{account:x}", "--soft", "100M", "--hard", "100M")
    run_once(conf)
    _same(server, account, tmp_path / "client" / "keys.dat", tree)


def test_second_client_on_an_account_pauses(server: StoreServer, tmp_path: Path, daemons: list[Daemon]) -> None:
    account = server.new_account()
    tree = _tree(tmp_path / "tree", 2, 1000)
    first = client_config(tmp_path, server, account, tree, name="first")
    run_once(first)
    second = client_config(tmp_path, server, account, tree, name="second")
    err = run_once(second, exit_code=1).stderr
    assert "written by another client" in err and "force-sync" in err
    run_once(first)  # the first client is unaffected
    d = Daemon(second, tmp_path / "second.log")
    daemons.append(d)
    assert d.ctl("sync-and-wait", exit_code=1).stderr.count("another client") == 1
    assert d.status()["state"] == "paused"
    assert "sync requested" in d.ctl("force-sync").stdout  # takes the account over
    deadline = time.monotonic() + 30
    while not (d.status()["last_run"] or {}).get("ok"):
        assert time.monotonic() < deadline, d.log.read_text()
        time.sleep(0.2)
    assert d.status()["state"] == "idle"


def test_server_killed_mid_run(server: StoreServer, tmp_path: Path, daemons: list[Daemon]) -> None:
    account = server.new_account()
    tree = _tree(tmp_path / "tree", 8, 1 << 20)
    conf = client_config(tmp_path, server, account, tree, extra="max_upload_rate = 2M\n")
    d = Daemon(conf, tmp_path / "daemon.log")
    daemons.append(d)
    d.ctl("sync")
    time.sleep(1.5)
    server.stop(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (status := d.status())["last_run"] is None:
        assert time.monotonic() < deadline, d.log.read_text()
        time.sleep(0.1)
    assert status["last_run"]["ok"] is False and "connection" in status["last_run"]["error"]
    assert 5 < status["next_run"] - time.time() <= 10, d.log.read_text()  # a retry after a backoff
    server.start()
    result = d.ctl("sync-and-wait", timeout=60)  # (sooner than the backoff)
    _same(server, account, tmp_path / "client" / "keys.dat", tree)
    assert result.stdout.startswith("run ok: ")


def test_client_killed_mid_run(server: StoreServer, tmp_path: Path) -> None:
    account = server.new_account()
    tree = _tree(tmp_path / "tree", 8, 1 << 20)
    conf = client_config(tmp_path, server, account, tree, extra="max_upload_rate = 2M\n")
    proc = subprocess.Popen([*boxbox_command(), "client", "--config", str(conf), "--once"], env=boxbox_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    run_once(conf)
    _same(server, account, tmp_path / "client" / "keys.dat", tree)
    server.accounts("check", f"{account:x}")  # exit 0: clean


def test_a_refused_upload_is_retried_next_run(server: StoreServer, tmp_path: Path) -> None:
    account = server.new_account(soft="1M", hard="1M")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_bytes(b"small")
    (tree / "z").write_bytes(os.urandom(2 << 20))  # the last entry: refused by the hard limit
    time.sleep(2.1)  # past the racy window: the directory would be recorded as in sync if it were done
    conf = client_config(tmp_path, server, account, tree)
    assert "store is full" in run_once(conf, exit_code=1).stderr
    server.accounts("setlimit", f"{account:x}", "--soft", "100M", "--hard", "100M")
    run_once(conf)
    _same(server, account, tmp_path / "client" / "keys.dat", tree)
