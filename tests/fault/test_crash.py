"""Crash points: kill -9 the server, the client, housekeeping, `check --fix` and a restore at random moments.

After every kill: restart what died, let the client finish, then `accounts check` reports
zero errors and a full restore is identical to the source. The normal suite runs a quick
subset (QUICK kill points); the soak (`-m slow`) runs FULL points in total.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import boxbox_command, boxbox_env
from tests.fault.harness import Setup, mutate_tree

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(os.environ.get("BOXBOX_EXE")), reason="source tree only")]

SCENARIOS = ("server-upload", "server-housekeeping", "housekeep-cli", "check-fix", "client", "restore")


class Tally:
    """Kill points done, and how many of them landed while the victim was still working."""

    def __init__(self) -> None:
        self.points = 0
        self.landed = 0

    def kill(self, proc: subprocess.Popen[Any]) -> None:
        self.points += 1
        if proc.poll() is None:
            self.landed += 1
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)


def _popen(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*boxbox_command(), *args], env=boxbox_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


_START_UP: dict[str, float] = {}


def _start_up(args: list[str]) -> float:
    """Wall time of a quick command of the same role: when the killed command's real work begins."""
    if args[0] not in _START_UP:
        t = time.monotonic()
        subprocess.run([*boxbox_command(), *args], env=boxbox_env(), capture_output=True, timeout=60)
        _START_UP[args[0]] = time.monotonic() - t
    return _START_UP[args[0]]


def run_scenario(kind: str, setup: Setup, points: int, seed: int, tally: Tally) -> None:
    rnd = random.Random(seed)
    out = setup.tmp / "out"
    setup.finish()  # a first backup to work on
    latest = 1.2  # seconds after the start that a kill may come
    if kind == "client":  # within a run like the ones killed: a pipelined incremental takes well under 1 s
        mutate_tree(setup.src, seed * 1000 - 1)
        t = time.monotonic()
        setup.finish()
        latest = time.monotonic() - t
    for i in range(points):
        mutate_tree(setup.src, seed * 1000 + i)
        delay = rnd.uniform(0.05, latest)
        if kind in ("server-upload", "server-housekeeping"):
            client = setup.client_popen()
            time.sleep(delay)
            tally.kill(setup.server.proc)  # type: ignore[arg-type]
            client.wait(120)
            setup.server.start()
        elif kind == "client":
            client = setup.client_popen()
            time.sleep(delay)
            tally.kill(client)
        elif kind in ("housekeep-cli", "check-fix"):
            setup.finish()  # something new to trim / check
            args = ["housekeep", f"{setup.account:x}"] if kind == "housekeep-cli" \
                else ["check", "--fix", f"{setup.account:x}"]
            start_up = _start_up(["accounts", "--config", str(setup.server.config), "info", f"{setup.account:x}"])
            proc = _popen("accounts", "--config", str(setup.server.config), *args)
            time.sleep(start_up * rnd.uniform(0.8, 1.3))  # the work itself takes only tens of ms
            tally.kill(proc)
        elif kind == "restore":
            setup.finish()
            if out.exists():
                shutil.rmtree(out)
            start_up = _start_up(["query", "--config", str(setup.conf), "--quiet", "ls", "/home"])
            proc = _popen("query", "--config", str(setup.conf), "--quiet", "restore", "/home", str(out))
            time.sleep(start_up * rnd.uniform(0.9, 1.6))
            tally.kill(proc)
            if out.exists():  # the interrupted restore is resumed, then compared
                subprocess.run([*boxbox_command(), "query", "--config", str(setup.conf), "--quiet", "restore",
                                "--resume", "/home", str(out)], env=boxbox_env(), capture_output=True, timeout=180,
                               check=True)
                from tests.clientutil import local_tree
                assert local_tree(out) == local_tree(setup.src)
        else:
            raise AssertionError(kind)
        if kind == "check-fix":  # a killed --fix may leave repairs to do: a second --fix finishes them
            report = setup.server.check(setup.account, fix=True)
            assert report.get("remaining", 0) == 0, report
        setup.verify(out)


def _setup(kind: str, tmp: Path, test_ca: Any) -> Setup:
    if kind == "server-housekeeping":  # the server's own housekeeping thread, every second, with work to do
        return Setup(tmp, test_ca, housekeeping="1s", soft="1M", hard="100M", big=1, files=20)
    if kind in ("housekeep-cli",):
        return Setup(tmp, test_ca, soft="1M", hard="100M", big=1, files=20)
    return Setup(tmp, test_ca, big=1, files=24)


QUICK = 4  # kill points per scenario in the normal suite: 6 x 4 = 24
FULL = 35  # per scenario in the soak: 6 x 35 = 210

#: Scenarios that expose a bug in code this suite does not own (see docs/RELIABILITY.md).
KNOWN_BUGS: dict[str, str] = {}  # housekeep-cli and server-upload damage was seen before store commit 7bcc9e7
#: Bugs that a few random kill points hit only sometimes: strict only in the full run.
FLAKY: set[str] = set()


def _params(points: int, full: bool = False) -> list[Any]:
    return [pytest.param(kind, points, marks=[pytest.mark.xfail(strict=full or kind not in FLAKY,
                                                                 reason=KNOWN_BUGS[kind])]
                         if kind in KNOWN_BUGS else [], id=kind) for kind in SCENARIOS]


def _run(kind: str, points: int, tmp_path: Path, test_ca: Any, seed: int) -> Tally:
    tally = Tally()
    setup = _setup(kind, tmp_path / kind, test_ca)
    try:
        run_scenario(kind, setup, points, seed, tally)
    except BaseException:
        print(f"crash points {kind}: FAILED after {tally.points} kills ({tally.landed} while working)")
        raise
    finally:
        setup.server.stop()
    print(f"crash points {kind}: {tally.points} kills, {tally.landed} while working, all recovered")
    return tally


@pytest.mark.parametrize("kind,points", _params(QUICK))
def test_quick_crash_points(kind: str, points: int, tmp_path: Path, test_ca: Any) -> None:
    tally = _run(kind, points, tmp_path, test_ca, seed=11 + SCENARIOS.index(kind))
    for extra in range(2):  # a loaded machine can make every kill land after the work: try a little more
        if tally.landed:
            break
        more = _run(kind, points, tmp_path / f"more{extra}", test_ca, seed=100 + extra)
        tally.points, tally.landed = tally.points + more.points, more.landed
    assert tally.landed >= 1, "no kill hit a running process"


@pytest.mark.slow
@pytest.mark.parametrize("kind,points", _params(FULL, full=True))
def test_full_crash_points(kind: str, points: int, tmp_path: Path, test_ca: Any) -> None:
    tally = _run(kind, points, tmp_path, test_ca, seed=2026 + SCENARIOS.index(kind))
    assert tally.points == points
    assert tally.landed >= points // 3
