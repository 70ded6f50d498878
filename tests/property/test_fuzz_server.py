"""Mutated recorded sessions against a live `boxbox server` after login, over TLS.

Each connection logs in with a good certificate, replays a mutation of the rest of a
recorded real session, and reads until the server answers or closes. Afterwards the
server is alive, another account's session works throughout, its memory stays bounded,
and the fuzzed account still checks clean.
"""

from __future__ import annotations

import random
import socket
import ssl
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from boxbox.wire import tls
from tests.fault.fuzzcorpus import corpus, mutate
from tests.fault.harness import FaultServer, errors

pytestmark = pytest.mark.e2e

NORMAL = 60
SLOW = 1500


@pytest.fixture()
def live(tmp_path: Path, test_ca: Any) -> Iterator[tuple[FaultServer, int, int]]:
    srv = FaultServer(tmp_path, test_ca)
    fuzzed, other = srv.new_account(), srv.new_account()
    srv.start()
    yield srv, fuzzed, other
    srv.stop()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _send(srv: FaultServer, ctx: ssl.SSLContext, data: bytes) -> None:
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        try:
            s.sendall(data)
            s.settimeout(0.2)
            while s.recv(65536):
                pass
        except (OSError, ssl.SSLError):
            pass  # closed on us, or silent: both fine; the server's read timeout ends it


def run_live(srv: FaultServer, fuzzed: int, other: int, count: int, seed: int) -> None:
    c = corpus()
    d = srv.ca.client_dir(fuzzed)
    ctx = tls.client_context(d / "client.crt", d / "client.key", d / "ca.crt")
    login, rest = c.session_to_server[:c.after_login], c.session_to_server[c.after_login:]
    rnd = random.Random(seed)
    assert srv.proc is not None
    rss0 = _rss_kib(srv.proc.pid)
    peak = rss0
    for i in range(count):
        _send(srv, ctx, login + mutate(rnd, rest, [rest]))
        if i % 25 == 0:
            assert srv.alive(), "the server died"
            with srv_client(srv, other) as cl:  # other sessions unaffected
                cl.usage()
            peak = max(peak, _rss_kib(srv.proc.pid))
    assert srv.alive()
    assert peak - rss0 < 150 * 1024, f"server RSS grew from {rss0} to {peak} KiB"
    time.sleep(1)
    report = srv.check(fuzzed)
    assert errors(report) == 0, report.get("problems")


def srv_client(srv: FaultServer, account: int) -> Any:
    from boxbox.wire.client import Client
    d = srv.ca.client_dir(account)
    ctx = tls.client_context(d / "client.crt", d / "client.key", d / "ca.crt")
    for _ in range(50):
        c = Client.connect("127.0.0.1", srv.port, ctx, server_hostname="localhost", timeout=10)
        c.login(read_only=True)
        return c
    raise AssertionError("unreachable")


def test_mutated_sessions_after_login(live: tuple[FaultServer, int, int]) -> None:
    run_live(*live, count=NORMAL, seed=5)


@pytest.mark.slow
def test_many_mutated_sessions_after_login(live: tuple[FaultServer, int, int]) -> None:
    run_live(*live, count=SLOW, seed=55)
