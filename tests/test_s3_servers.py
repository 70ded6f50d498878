"""Several `boxbox server`s on one SeaweedFS bucket: any server serves any account, one
writer per account across them all, a killed server's lease expires, clients fail over;
and a backup while a volume server of a SeaweedFS cluster dies. Plus the versions and
background-housekeeping scenarios of test_versions_server with the store on a bucket."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from boxbox.wire import tls
from boxbox.wire.client import Client

from tests.clientutil import StoreServer, client_config, local_tree, run_once, store_tree
from tests.conftest import boxbox_command, boxbox_env, free_port, run_boxbox
from tests.serverutil import TEST_LEASE, s3_section
from tests.test_server import RunningServer
from tests.test_versions_server import A as VERSIONS_ACCOUNT
from tests.test_versions_server import (  # noqa: F401 - collected here, on the S3 store
    test_accounts_housekeep_beside_the_server, test_diffs_and_versions_over_tls_and_background_housekeeping,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, test_ca: Any, seaweed: Any) -> Iterator[RunningServer]:
    """test_versions_server's server (housekeeping and scrub every second), its disc set replaced by a bucket."""
    tmp = tmp_path_factory.mktemp("s3vserver")
    srv = RunningServer(tmp, test_ca)
    text = srv.config.read_text().replace("log_level = info\n", "log_level = info\nhousekeeping_interval = 1s\n"
                                          "scrub_interval = 1s\n")
    srv.config.write_text(text[:text.index("[discset 0]")] + textwrap.dedent(s3_section(seaweed.new_bucket(), tmp)))
    srv.accounts("create", f"{VERSIONS_ACCOUNT:x}", "--soft", "50M", "--hard", "60M")
    srv.start()
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.stop()


@pytest.fixture()
def pair(tmp_path: Path, test_ca: Any, seaweed: Any) -> Iterator[tuple[StoreServer, StoreServer]]:
    """Two servers, each with its own config and account database file, on one bucket."""
    s3 = seaweed.new_bucket()
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    one = StoreServer(tmp_path / "one", test_ca, s3=s3)
    two = StoreServer(tmp_path / "two", test_ca, s3=s3)
    one.start()
    two.start()
    yield one, two
    one.stop()
    two.stop()


def attempt(conf: Path) -> subprocess.CompletedProcess[str]:
    """One `client --once` run that may fail; a failure is still one clean line."""
    proc = subprocess.run([*boxbox_command(), "client", "--config", str(conf), "--once"], capture_output=True,
                          text=True, env=boxbox_env(), timeout=180)
    assert "Traceback" not in proc.stderr and (proc.returncode == 0 or "boxbox: " in proc.stderr), proc.stderr
    return proc


def make_tree(root: Path, seed: int, files: int = 30) -> Path:
    for i in range(files):
        d = root / f"d{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(2000 + i * 100) + bytes([seed]))
    return root


def writer(server: StoreServer, account: int) -> Client:
    """A client holding the account's write lease through `server` until closed."""
    d = server.ca.client_dir(account)
    c = Client.connect("127.0.0.1", server.port, tls.client_context(d / "client.crt", d / "client.key", d / "ca.crt"),
                       server_hostname="localhost", timeout=15)
    c.login(read_only=False)
    return c


def test_any_server_serves_any_account_and_one_writer_across_them(
        pair: tuple[StoreServer, StoreServer], tmp_path: Path) -> None:
    one, two = pair
    a, b = one.new_account(), one.new_account()  # listed in the bucket: server two sees them too
    trees = {a: make_tree(tmp_path / "ta", 1), b: make_tree(tmp_path / "tb", 2)}
    confs = {a: client_config(tmp_path, one, a, trees[a], name="ca"),
             b: client_config(tmp_path, two, b, trees[b], name="cb")}
    results: dict[int, Any] = {}
    threads = [threading.Thread(target=lambda acc=acc: results.__setitem__(acc, run_once(confs[acc])))
               for acc in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results) == {a, b}  # both at once, on different servers
    for acc, srv in ((a, two), (b, one)):  # and read back through the other server
        stored = {p: (k, data) for p, (k, data, _) in store_tree(srv, acc, tmp_path / f"c{'a' if acc == a else 'b'}"
                                                                 / "keys.dat").items()}
        assert stored == local_tree(trees[acc])
    held = writer(one, a)  # a writing session of account a on server one ...
    try:
        conf = client_config(tmp_path, two, a, trees[a], name="ca")  # a's client, now through server two
        (trees[a] / "new").write_bytes(b"new")
        out = run_once(conf, exit_code=1)  # ... is refused while server one's session holds the lease
        assert f"account {a:08x} is in use by another client (lease held by " in out.stderr, out.stderr
    finally:
        held.close()
    run_once(conf)  # once the first let go, the account is free on any server


def test_killed_lease_holder_expires_and_clients_fail_over(
        pair: tuple[StoreServer, StoreServer], tmp_path: Path) -> None:
    one, two = pair
    a = one.new_account()
    tree = make_tree(tmp_path / "tree", 3)
    conf = client_config(tmp_path, one, a, tree)
    run_once(conf)
    held = writer(one, a)  # server one takes the lease, and then dies without letting go
    os.kill(one.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    one.proc.wait(10)  # type: ignore[union-attr]
    killed = time.monotonic()
    held.close()
    (tree / "after").write_bytes(os.urandom(5000))
    # the same client now lists both servers, the dead one first: it is skipped
    failover = client_config(tmp_path, two, a, tree, keys=tmp_path / "client" / "keys.dat")
    failover.write_text(failover.read_text().replace("server = localhost\n", f"server = localhost:{one.port}, localhost\n"))
    out = run_once(failover, exit_code=1)  # before expiry: the dead server's lease still holds
    assert "in use" in out.stderr and "lease held by" in out.stderr
    while True:
        proc = attempt(failover)
        if proc.returncode == 0:
            break
        assert "in use" in proc.stderr, proc.stderr
        assert time.monotonic() - killed < TEST_LEASE.duration + TEST_LEASE.skew + 10, proc.stderr
        time.sleep(0.5)
    assert time.monotonic() - killed >= TEST_LEASE.duration - TEST_LEASE.skew  # not before the lease ran out
    stored = {p: (k, data) for p, (k, data, _) in store_tree(two, a, tmp_path / "client" / "keys.dat").items()}
    assert stored == local_tree(tree)
    out = run_boxbox("accounts", "--config", str(two.config), "check", f"{a:x}")
    assert "0 errors" in out.stdout


@pytest.fixture(scope="module")
def cluster_server(tmp_path_factory: pytest.TempPathFactory, test_ca: Any,
                   seaweed_cluster: Any) -> Iterator[StoreServer]:
    tmp = tmp_path_factory.mktemp("s3cluster")
    srv = StoreServer(tmp, test_ca, s3=seaweed_cluster.new_bucket())
    srv.start()
    yield srv
    srv.stop()


def test_a_volume_server_dies_mid_backup(cluster_server: StoreServer, seaweed_cluster: Any, tmp_path: Path) -> None:
    a = cluster_server.new_account()
    tree = tmp_path / "tree"
    for i in range(400):
        d = tree / f"d{i % 8}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(20_000 + 200 * i))
    # ~24 MB at 4 MiB/s: still uploading when the volume server dies (unlimited, packs made it a second's work)
    conf = client_config(tmp_path, cluster_server, a, tree, extra="max_upload_rate = 4M\n")
    proc = subprocess.Popen([*boxbox_command(), "client", "--config", str(conf), "--once"], env=boxbox_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # the client has started and is uploading
    assert proc.poll() is None, "the backup ended before the volume server could be killed"
    seaweed_cluster.kill_volume(1)
    try:
        _, err = proc.communicate(timeout=180)
        print(f"backup with a volume server killed: exit {proc.returncode}; {err.strip().splitlines()[-1:]}")
        if proc.returncode != 0:  # failing is allowed, but cleanly: one boxbox line, no traceback
            assert proc.returncode == 1 and "Traceback" not in err and "boxbox: " in err, err
        deadline = time.monotonic() + 120
        while True:  # the retry completes the backup (the cluster has the other copies)
            retry = attempt(conf)
            if retry.returncode == 0:
                break
            assert time.monotonic() < deadline, retry.stderr
            time.sleep(2)
        out = tmp_path / "restored"
        run_boxbox("query", "--config", str(conf), "--quiet", "restore", "/home", str(out), timeout=180)
        assert local_tree(out) == local_tree(tree)  # every file restores identically
        check = run_boxbox("accounts", "--config", str(cluster_server.config), "check", f"{a:x}")
        assert "0 errors" in check.stdout
    finally:
        seaweed_cluster.restart_volume(1)


def test_store_server_address_list() -> None:
    from boxbox.wire.client import server_addresses

    assert server_addresses("a.example, b.example:2202  c", 2201) == [("a.example", 2201), ("b.example", 2202),
                                                                     ("c", 2201)]
    assert server_addresses("[::1]:2203", 2201) == [("::1", 2203)]


def test_connect_any_skips_servers_that_cannot_be_reached(pair: tuple[StoreServer, StoreServer]) -> None:
    one, _ = pair
    d = one.ca.client_dir(0xC0FF)
    ctx = tls.client_context(d / "client.crt", d / "client.key", d / "ca.crt")
    dead = free_port()
    with Client.connect_any(f"localhost:{dead}, localhost:{one.port}", 1, ctx, timeout=10) as c:
        assert c.server_software
    with pytest.raises(Exception, match=f"cannot connect to localhost:{dead}: .*; localhost:1: "):
        Client.connect_any(f"localhost:{dead}, localhost", 1, ctx, timeout=10)
