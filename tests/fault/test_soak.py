"""Soak: many accounts, one client each, backing up changing trees against one server with housekeeping on.

ACCOUNTS accounts (soft limits small enough that housekeeping trims old versions all the
time) are backed up round-robin by WORKERS concurrent `boxbox client --once` runs for
SECONDS; every tree changes before each of its runs. At the end: no run failed, every
account checks clean, every account restores identically, and the server's RSS sampled
over the run is printed (and may not grow without bound). Marked slow; the numbers can be
scaled down with BOXBOX_SOAK_ACCOUNTS / BOXBOX_SOAK_SECONDS.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.clientutil import client_config, local_tree
from tests.conftest import boxbox_command, boxbox_env, run_boxbox
from tests.fault.harness import FaultServer, errors, make_tree, mutate_tree

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ACCOUNTS = int(os.environ.get("BOXBOX_SOAK_ACCOUNTS", "50"))
SECONDS = float(os.environ.get("BOXBOX_SOAK_SECONDS", "600"))
WORKERS = 4


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_soak(tmp_path: Path, test_ca: Any) -> None:
    srv = FaultServer(tmp_path / "srv", test_ca, housekeeping="5s")
    accounts = []
    for i in range(ACCOUNTS):
        account = srv.new_account(soft="400k", hard="50M")
        src = tmp_path / f"src{i}"
        make_tree(src, 100 + i, files=12)
        conf = client_config(tmp_path, srv, account, src, name=f"client{i}")  # type: ignore[arg-type]
        accounts.append((account, src, conf))
    srv.start()
    assert srv.proc is not None
    rss: list[tuple[float, float]] = []
    failures: list[str] = []
    runs = [0] * ACCOUNTS
    stop = time.monotonic() + SECONDS
    start = time.monotonic()

    def sample() -> None:
        while time.monotonic() < stop:
            rss.append((time.monotonic() - start, _rss_mib(srv.proc.pid)))  # type: ignore[union-attr]
            time.sleep(5)

    def worker(w: int) -> None:
        mine = list(range(w, ACCOUNTS, WORKERS))  # one writer per account: each account has one worker
        k = 0
        while time.monotonic() < stop:
            i = mine[k % len(mine)]
            k += 1
            account, src, conf = accounts[i]
            mutate_tree(src, runs[i] * 1000 + i)
            proc = subprocess.run([*boxbox_command(), "client", "--config", str(conf), "--once"],
                                  capture_output=True, text=True, env=boxbox_env(), timeout=300)
            runs[i] += 1
            if proc.returncode != 0 or "Traceback" in proc.stderr:
                failures.append(f"account {account:x} run {runs[i]}: {proc.stderr[-500:]}")

    threading.Thread(target=sample, daemon=True).start()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(worker, range(min(WORKERS, ACCOUNTS))))
    print(f"soak: {ACCOUNTS} accounts, {sum(runs)} client runs in {time.monotonic() - start:.0f} s")
    print("server RSS MiB over time: " + ", ".join(f"{t:.0f}s={m:.0f}" for t, m in rss[::max(1, len(rss) // 20)]))
    assert not failures, failures[:5]
    for account, src, conf in accounts:
        run_boxbox("client", "--config", str(conf), "--once", timeout=300)  # the last changes
        report = srv.check(account)
        assert errors(report) == 0, (hex(account), report.get("problems"))
        out = tmp_path / f"out-{account:x}"
        run_boxbox("query", "--config", str(conf), "--quiet", "restore", "/home", str(out), timeout=300)
        assert local_tree(out) == local_tree(src), hex(account)
    srv.stop()
    if len(rss) >= 4:
        first, last = rss[1][1], max(m for _, m in rss[len(rss) // 2:])
        assert last < first * 3 + 100, f"server RSS grew from {first:.0f} to {last:.0f} MiB"
