"""Network faults between client and server: cuts at random byte offsets, stalls, delays.

The client runs through `Proxy`; a cut must end the run with a clear error (no traceback,
no hang), and after a clean run the store checks clean and restores identically. The
daemon's retry with backoff after a failed run is tested in tests/test_client_failures.py.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.fault.harness import Setup, mutate_tree
from tests.fault.proxy import Proxy

pytestmark = pytest.mark.e2e


class Net(Setup):
    def __init__(self, tmp: Path, test_ca: Any) -> None:
        super().__init__(tmp, test_ca, big=1, files=20)
        self.proxy = Proxy(self.server.port)
        self.direct = self.conf.read_text()
        self.proxied = tmp / "client" / "proxied.conf"
        self.proxied.write_text(re.sub(r"^port = \d+$", f"port = {self.proxy.port}", self.direct, flags=re.M))

    def through_proxy(self, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        conf, self.conf = self.conf, self.proxied
        try:
            return self.client_once(timeout=timeout)
        finally:
            self.conf = conf


@pytest.fixture()
def net(tmp_path: Path, test_ca: Any) -> Iterator[Net]:
    n = Net(tmp_path, test_ca)
    yield n
    n.proxy.close()
    n.server.stop()


def _cuts(net: Net, count: int, seed: int) -> None:
    rnd = random.Random(seed)
    net.proxy.reset()
    r = net.through_proxy()  # the size of a whole first backup, to cut inside it
    assert r.returncode == 0, r.stderr
    total = net.proxy.bytes
    for i in range(count):
        mutate_tree(net.src, seed + i)
        (net.src / f"cut{i}.bin").write_bytes(os.urandom(rnd.randrange(10_000, 600_000)))
        net.proxy.reset(cut_after=rnd.randrange(0, max(1, total)))
        r = net.through_proxy()
        if net.proxy.cuts and r.returncode == 0:
            pass  # cut after the last reply that mattered: nothing was lost
        elif net.proxy.cuts:
            assert "boxbox:" in r.stderr, r.stderr[-2000:]
        net.proxy.reset()
        net.proxy.cuts = 0
        net.verify(net.tmp / "out")


def test_cut_at_random_offsets(net: Net) -> None:
    _cuts(net, 6, seed=3)


@pytest.mark.slow
def test_cut_at_many_random_offsets(net: Net) -> None:
    _cuts(net, 60, seed=33)


def test_delay_every_chunk(net: Net) -> None:
    mutate_tree(net.src, 1)
    net.proxy.reset(delay=0.01)
    r = net.through_proxy()
    assert r.returncode == 0, r.stderr
    net.proxy.reset()
    net.assert_clean()
    net.assert_restores(net.tmp / "out")


def test_short_stall_is_ridden_out(net: Net) -> None:
    mutate_tree(net.src, 2)
    net.proxy.reset(stall_after=20_000, stall_seconds=3)
    r = net.through_proxy()
    assert r.returncode == 0, r.stderr
    net.assert_clean()
    net.assert_restores(net.tmp / "out")


def test_stall_longer_than_the_server_read_timeout(net: Net) -> None:
    """The server gives up on a silent client after read_timeout (10 s here); the run fails cleanly."""
    mutate_tree(net.src, 4)
    (net.src / "stall.bin").write_bytes(os.urandom(2 << 20))
    net.proxy.reset(stall_after=200_000, stall_seconds=13)
    r = net.through_proxy(timeout=120)
    assert "Traceback" not in r.stderr
    if r.returncode != 0:
        assert "boxbox:" in r.stderr, r.stderr[-2000:]
    net.proxy.reset()
    net.verify(net.tmp / "out")
