"""raidfile crash safety: a writer killed with SIGKILL leaves old or new content, and no temps once opened.

Two kinds of kill: injected at exactly the k-th `os.replace` / `os.fsync` of a write, delete,
rename or repair (every boundary between the three renames is hit), and at random moments
while a child process overwrites a file in a loop (a fast handful here; hundreds with -m slow).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boxbox.errors import NotFound
from boxbox.raidfile import DiscSet
from boxbox.raidfile.layout import HEADER, STRIPE2, parse_header
from tests.conftest import ROOT

CHILD = r"""
import json, os, random, signal, sys, threading
args = json.loads(sys.argv[1])
sys.path.insert(0, args["root"])
from boxbox.raidfile import DiscSet
ds = DiscSet("t", args["dirs"], args["block_size"])

def content(seed):
    rng = random.Random(seed)
    return rng.randbytes(rng.randrange(args["max_size"]))

if args["op"] == "loop":
    i = args["start"]
    while True:
        data = content(i)
        with ds.create("f") as w:
            for o in range(0, len(data), 7000):
                w.write(data[o:o + 7000])
        print(i, flush=True)
        i += 1

lock, count = threading.Lock(), [0]
real = getattr(os, args["hook"])
def hooked(*a):
    with lock:
        n = count[0]
        count[0] += 1
    if n == args["k"]:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a)
setattr(os, args["hook"], hooked)
if args["op"] == "write":
    with ds.create(args["name"]) as w:
        w.write(content(args["seed"]))
elif args["op"] == "delete":
    ds.delete(args["name"])
elif args["op"] == "rename":
    ds.rename(args["name"], args["dst"])
elif args["op"] == "repair":
    ds.repair(args["name"])
"""

MAX_SIZE = 3000


def content(seed: int, max_size: int = MAX_SIZE) -> bytes:
    rng = random.Random(seed)
    return rng.randbytes(rng.randrange(max_size))


def make_set(tmp_path: Path) -> DiscSet:
    dirs = [tmp_path / f"d{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    return DiscSet("t", dirs, 64)


def child_args(ds: DiscSet, **kw: object) -> str:
    return json.dumps({"root": str(ROOT), "dirs": [str(d) for d in ds.directories], "block_size": ds.block_size,
                       "max_size": MAX_SIZE, **kw})


def run_child(ds: DiscSet, **kw: object) -> bool:
    """Run one operation in a child; True if it was killed by the injected SIGKILL."""
    proc = subprocess.run([sys.executable, "-c", CHILD, child_args(ds, **kw)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
    return proc.returncode == -signal.SIGKILL


def state(ds: DiscSet, name: str) -> bytes | None:
    try:
        with ds.open(name) as r:
            return r.read()
    except NotFound:
        return None


def no_temps(ds: DiscSet) -> bool:
    return not [p for d in ds.directories for p in d.rglob("*.rfw")]


def healthy_after_scrub(ds: DiscSet) -> bool:
    """A scrub finds everything readable (repairing stale stripes), and then everything ok."""
    return all(r.readable for _, r in ds.scrub()) and all(r.ok for _, r in ds.scrub())


def write(ds: DiscSet, name: str, data: bytes) -> None:
    with ds.create(name) as w:
        w.write(data)


@pytest.mark.parametrize("hook, k", [("replace", k) for k in range(4)] + [("fsync", k) for k in range(7)])
def test_kill_during_create_and_overwrite(tmp_path: Path, hook: str, k: int) -> None:
    ds = make_set(tmp_path)
    old, new = content(1), content(2)
    write(ds, "a/old", old)
    killed_new = run_child(ds, op="write", name="a/new", seed=2, hook=hook, k=k)
    killed_over = run_child(ds, op="write", name="a/old", seed=2, hook=hook, k=k)
    assert killed_over == killed_new == ((hook == "replace" and k < 3) or (hook == "fsync" and k < 6))
    # renames happen after the three temp fsyncs; the 2nd rename is the commit point
    expect_new = (hook == "replace" and k >= 2) or (hook == "fsync" and k >= 3) or not killed_over
    assert state(ds, "a/old") == (new if expect_new else old)
    assert state(ds, "a/new") in ((new,) if not killed_new else (None, new))
    assert no_temps(ds)
    assert healthy_after_scrub(ds)


@pytest.mark.parametrize("hook, k", [("replace", k) for k in range(4)] + [("fsync", k) for k in range(4)])
def test_kill_during_delete(tmp_path: Path, hook: str, k: int) -> None:
    ds = make_set(tmp_path)
    old = content(3)
    write(ds, "f", old)
    killed = run_child(ds, op="delete", name="f", hook=hook, k=k)
    assert killed == (k < 3)
    got = state(ds, "f")
    if hook == "replace" and killed:
        assert got == old  # a delete killed before its last move is undone
    else:
        assert got in (old, None)
    assert no_temps(ds)
    assert healthy_after_scrub(ds)


@pytest.mark.parametrize("dst_exists", [False, True])
@pytest.mark.parametrize("k", range(7))
def test_kill_during_rename(tmp_path: Path, dst_exists: bool, k: int) -> None:
    ds = make_set(tmp_path)
    src, dst = content(4), content(5)
    write(ds, "s/src", src)
    if dst_exists:
        write(ds, "d/dst", dst)
    assert run_child(ds, op="rename", name="s/src", dst="d/dst", hook="replace", k=k) == (k < 6)
    got_src, got_dst = state(ds, "s/src"), state(ds, "d/dst")
    assert got_src in (src, None)
    assert got_dst in (src, dst if dst_exists else None)
    assert src in (got_src, got_dst)  # never lost
    assert no_temps(ds)
    assert healthy_after_scrub(ds)


@pytest.mark.parametrize("hook, k", [("replace", 0), ("fsync", 0), ("fsync", 1)])
def test_kill_during_repair(tmp_path: Path, hook: str, k: int) -> None:
    ds = make_set(tmp_path)
    data = content(6)
    write(ds, "f", data)
    victim = next(p for d in ds.directories if (p := d / "f.rf").exists()
                  and parse_header(p.read_bytes()[: HEADER.size]).role == STRIPE2)
    victim.unlink()
    assert run_child(ds, op="repair", name="f", hook=hook, k=k)
    assert state(ds, "f") == data
    assert no_temps(ds)
    assert healthy_after_scrub(ds)


def kill_loop(tmp_path: Path, rounds: int, seed: int) -> None:
    """Kill an overwriting child at random moments; every time the file is one of two versions."""
    ds = make_set(tmp_path)
    max_size = 200_000
    write(ds, "f", content(0, max_size))
    rng = random.Random(seed)
    start, current = 1, 0
    for _ in range(rounds):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, child_args(ds, op="loop", start=start,
                                                                           max_size=max_size)],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.08, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        done = [int(x) for x in out.split()]
        # committed and reported, or the one being committed when killed
        candidates = [done[-1], done[-1] + 1] if done else [current, start]
        got = state(ds, "f")
        matches = [v for v in candidates if got == content(v, max_size)]
        assert matches, f"content is neither version {candidates[0]} nor {candidates[1]}"
        assert no_temps(ds)
        current, start = matches[0], candidates[1] + 1
    assert healthy_after_scrub(ds)


def test_random_kills_while_overwriting(tmp_path: Path) -> None:
    kill_loop(tmp_path, rounds=8, seed=1)


@pytest.mark.slow
def test_random_kills_while_overwriting_long(tmp_path: Path) -> None:
    kill_loop(tmp_path, rounds=300, seed=2)
