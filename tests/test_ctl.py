"""`boxbox ctl` against a real client daemon subprocess (snapshot and lazy mode) and a real server."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.clientutil import Daemon, StoreServer, client_config, store_tree
from tests.conftest import boxbox_command, boxbox_env, run_boxbox

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, test_ca: Any) -> Iterator[StoreServer]:
    srv = StoreServer(tmp_path_factory.mktemp("ctlserver"), test_ca)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


def test_snapshot_daemon_commands(server: StoreServer, tmp_path: Path, daemons: list[Daemon]) -> None:
    account = server.new_account()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_bytes(b"first")
    events = tmp_path / "events"
    script = tmp_path / "notify.sh"
    script.write_text(f"#!/bin/sh\necho \"$1\" >> {events}\n")
    script.chmod(0o755)
    metrics = tmp_path / "boxbox.prom"
    conf = client_config(tmp_path, server, account, tree,
                         extra=f"notify_script = {script}\nmetrics_textfile = {metrics}\n")
    d = Daemon(conf, tmp_path / "daemon.log")
    daemons.append(d)
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
    status = d.status()
    assert status["state"] == "idle" and status["mode"] == "snapshot" and status["last_run"] is None
    assert status["next_run"] is None  # snapshot mode: only on request
    out = d.ctl("sync-and-wait").stdout
    assert "run ok: 1 files uploaded" in out
    status = d.status()
    assert status["last_run"]["ok"] and status["totals"]["files_uploaded"] == 1
    assert "last run:" in d.ctl("status").stdout
    assert events.read_text().split() == ["backup-start", "backup-ok", "backup-finish"]
    assert "boxbox_client_last_run_ok 1\n" in metrics.read_text()
    assert "boxbox_client_last_run_files_uploaded 1\n" in metrics.read_text()
    keys = tmp_path / "client" / "keys.dat"
    assert store_tree(server, account, keys)[b"a"][1] == b"first"

    # wait-for-end returns after a run started by another ctl
    (tree / "b").write_bytes(b"second")
    waiter = subprocess.Popen([*boxbox_command(), "ctl", "--config", str(conf), "wait-for-end"], env=boxbox_env(),
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert waiter.poll() is None
    d.ctl("sync")
    assert waiter.wait(30) == 0
    assert store_tree(server, account, keys)[b"b"][1] == b"second"

    d.ctl("reload")
    assert "terminating" in d.ctl("terminate").stdout
    assert d.proc.wait(20) == 0
    assert not d.socket.exists()
    err = d.ctl("status", exit_code=1).stderr
    assert "no client daemon is running" in err


def test_lazy_mode_waits_for_file_age(server: StoreServer, tmp_path: Path, daemons: list[Daemon]) -> None:
    account = server.new_account()
    tree = tmp_path / "tree"
    tree.mkdir()
    old = tree / "old"
    old.write_bytes(b"old enough")
    time.sleep(2.5)
    (tree / "young").write_bytes(b"too young")
    conf = client_config(tmp_path, server, account, tree, lazy=True, extra="""\
        update_store_interval = 1h
        minimum_file_age = 2s
        max_upload_wait = 4s
        """)
    d = Daemon(conf, tmp_path / "daemon.log")
    daemons.append(d)
    deadline = time.monotonic() + 30
    while d.status()["last_run"] is None:  # lazy mode runs at start
        assert time.monotonic() < deadline, d.log.read_text()
        time.sleep(0.2)
    keys = tmp_path / "client" / "keys.dat"
    stored = store_tree(server, account, keys)
    assert stored[b"old"][1] == b"old enough" and b"young" not in stored
    status = d.status()
    assert status["last_run"]["waiting"] == 1 and status["next_run"] > time.time() + 3000
    # keeps changing, so never old enough: uploaded once it has waited max_upload_wait
    deadline = time.monotonic() + 30
    while b"young" not in store_tree(server, account, keys):
        assert time.monotonic() < deadline, d.log.read_text()
        (tree / "young").write_bytes(b"still changing %f" % time.time())
        d.ctl("sync-and-wait")
        time.sleep(0.5)


def test_sigterm_mid_run_keeps_the_state_consistent(server: StoreServer, tmp_path: Path,
                                                    daemons: list[Daemon]) -> None:
    account = server.new_account()
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(6):
        (tree / f"f{i}").write_bytes(os.urandom(1 << 20))
    conf = client_config(tmp_path, server, account, tree, extra="max_upload_rate = 2M\n")
    d = Daemon(conf, tmp_path / "daemon.log")
    daemons.append(d)
    d.ctl("sync")
    time.sleep(1.0)
    os.kill(d.proc.pid, signal.SIGTERM)
    assert d.proc.wait(30) == 0
    assert "event backup-error: stopped" in d.log.read_text()  # the run was cut short
    d2 = Daemon(conf, tmp_path / "daemon2.log")
    daemons.append(d2)
    d2.ctl("sync-and-wait")
    stored = store_tree(server, account, tmp_path / "client" / "keys.dat")
    assert {p: v[1] for p, v in stored.items()} == {os.fsencode(p.name): p.read_bytes() for p in tree.iterdir()}
    server.accounts("check", f"{account:x}")


def test_client_init(tmp_path: Path, server: StoreServer) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    conf = tmp_path / "client.conf"
    conf.write_text(f"""\
[client]
server = localhost
account = 5a
certificate = {tmp_path / 'etc' / 'client.crt'}
private_key = {tmp_path / 'etc' / 'client.key'}
ca_certificate = {tmp_path / 'etc' / 'ca.crt'}
keys_file = {tmp_path / 'etc' / 'keys.dat'}
data_directory = {tmp_path / 'state'}

[location home]
path = {tree}
""")
    out = run_boxbox("client", "init", "--config", str(conf)).stdout
    assert "created keys file" in out and "client.csr" in out and "still missing" in out
    assert stat.S_IMODE(os.stat(tmp_path / "etc" / "keys.dat").st_mode) == 0o600
    assert (tmp_path / "etc" / "keys.dat").stat().st_size == 1024
    assert (tmp_path / "etc" / "client.csr").exists() and (tmp_path / "state").is_dir()
    keys_before = (tmp_path / "etc" / "keys.dat").read_bytes()
    out = run_boxbox("client", "init", "--config", str(conf)).stdout  # idempotent: never overwrites
    assert "already exists" in out and (tmp_path / "etc" / "keys.dat").read_bytes() == keys_before
    conf.write_text(conf.read_text().replace(str(tree), str(tmp_path / "missing")))
    err = run_boxbox("client", "init", "--config", str(conf), exit_code=1).stderr
    assert "location home.path" in err and "not a directory" in err


def test_sync_allow_script_defers_and_force_sync_does_not_ask(server: StoreServer, tmp_path: Path,
                                                               daemons: list[Daemon]) -> None:
    account = server.new_account()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"data")
    answer = tmp_path / "answer"
    answer.write_text("3600\n")
    script = tmp_path / "allow.sh"
    script.write_text(f"#!/bin/sh\ncat {answer}\n")
    script.chmod(0o755)
    conf = client_config(tmp_path, server, account, tree, extra=f"sync_allow_script = {script}\n")
    d = Daemon(conf, tmp_path / "daemon.log")
    daemons.append(d)
    waiter = subprocess.Popen([*boxbox_command(), "ctl", "--config", str(conf), "wait-for-sync"], env=boxbox_env(),
                              stdout=subprocess.PIPE, text=True)
    d.ctl("sync")
    time.sleep(1.0)
    status = d.status()
    assert status["runs_started"] == 0 and status["next_run"] > time.time() + 3000  # deferred by the script
    assert waiter.poll() is None
    d.ctl("force-sync")
    assert waiter.wait(30) == 0  # wait-for-sync returns once a run starts
    deadline = time.monotonic() + 30
    while (d.status()["last_run"] or {}).get("ok") is not True:
        assert time.monotonic() < deadline, d.log.read_text()
        time.sleep(0.2)
    answer.write_text("now\n")
    (tree / "g").write_bytes(b"more")
    assert "run ok: 1 files uploaded" in d.ctl("sync-and-wait").stdout


def test_sighup_reloads_the_config(server: StoreServer, tmp_path: Path, daemons: list[Daemon]) -> None:
    account = server.new_account()
    tree, extra = tmp_path / "tree", tmp_path / "extra"
    tree.mkdir()
    extra.mkdir()
    (extra / "e").write_bytes(b"extra")
    conf = client_config(tmp_path, server, account, tree)
    d = Daemon(conf, tmp_path / "daemon.log")
    daemons.append(d)
    d.ctl("sync-and-wait")
    conf.write_text(conf.read_text() + f"\n[location extra]\npath = {extra}\n")
    os.kill(d.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "reloaded" not in d.log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    d.ctl("sync-and-wait")
    assert store_tree(server, account, tmp_path / "client" / "keys.dat", "extra")[b"e"][1] == b"extra"
