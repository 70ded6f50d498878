"""End to end: diff uploads and old versions over TLS against a real `boxbox server`, whose
housekeeping thread trims the account while it runs."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from boxbox.objects.directory import Directory

from tests.serverutil import download, upload, upload_diff
from tests.test_server import RunningServer
from tests.test_store_support import make_keys

pytestmark = pytest.mark.e2e

A = 0xC7
KEYS = make_keys()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, test_ca: Any) -> Iterator[RunningServer]:
    srv = RunningServer(tmp_path_factory.mktemp("vserver"), test_ca)
    srv.config.write_text(srv.config.read_text().replace("log_level = info\n",
                                                         "log_level = info\nhousekeeping_interval = 1s\n"
                                                         "scrub_interval = 1s\n"))
    srv.accounts("create", f"{A:x}", "--soft", "50M", "--hard", "60M")
    srv.start()
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.stop()


def test_diffs_and_versions_over_tls_and_background_housekeeping(server: RunningServer) -> None:
    data = os.urandom(300_000)
    history = [data]
    with server.client(A) as c:
        ids = [upload(c, KEYS, 1, b"report", data)]
        for i in range(5):
            data = data[:i * 50_000] + os.urandom(1000) + data[i * 50_000 + 1000:]
            history.append(data)
            ids.append(upload_diff(c, KEYS, 1, b"report", ids[-1], data))
        for obj, expected in zip(ids, history):
            assert download(c, KEYS, 1, obj, b"report") == expected
        used = c.usage().blocks_used
    # the patches are small: six versions cost well under twice one version
    one = (300_000 // 4096) * 3 // 2
    assert used < 2 * one + 40
    server.accounts("setlimit", f"{A:x}", "--soft", "1k")
    deadline = time.monotonic() + 20
    while True:
        with server.client(A, read_only=True) as c:
            left = [e.object_id for e in Directory.parse(c.list_directory(1)).entries]
            if left == [ids[-1]]:
                assert download(c, KEYS, 1, ids[-1], b"report") == history[-1]
                break
        assert time.monotonic() < deadline, f"housekeeping did not trim: {left}"
        time.sleep(0.3)
    while "housekeeping account" not in server.log.read_text():  # logged when the pass ends
        assert time.monotonic() < deadline, "housekeeping logged nothing"
        time.sleep(0.1)
    out = server.accounts("check", f"{A:x}").stdout
    assert "0 errors" in out


def test_accounts_housekeep_beside_the_server(server: RunningServer, tmp_path: Path) -> None:
    out = server.accounts("housekeep", f"{A:x}").stdout
    assert f"account {A:08x}" in out
    with server.client(A) as c:  # the client gets the account right after
        c.usage()


def test_server_scrub_rebuilds_a_flipped_stripe(server: RunningServer) -> None:
    before = {p.name for d in server.discs for p in d.rglob("pack~*.rf")}
    with server.client(A) as c:
        obj = upload(c, KEYS, 1, b"scrubbed", os.urandom(100_000))
    assert not [p for d in server.discs for p in d.rglob(f"{obj:016x}.rf")]  # small and new: in its sync's pack
    [pack] = {p.name for d in server.discs for p in d.rglob("pack~*.rf")} - before
    stripes = sorted(p for d in server.discs for p in d.rglob(pack))
    assert len(stripes) == 3
    damaged = bytearray(stripes[1].read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    stripes[1].write_bytes(bytes(damaged))
    deadline = time.monotonic() + 20
    while stripes[1].read_bytes() == bytes(damaged):
        assert time.monotonic() < deadline, "the server's scrub did not rebuild the stripe"
        time.sleep(0.2)
    assert "scrub of account" in server.log.read_text()
    assert "0 errors" in server.accounts("check", f"{A:x}").stdout
