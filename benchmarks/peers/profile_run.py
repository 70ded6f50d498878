"""Run `python -m boxbox ...` under cProfile, every thread included; dump one .prof per thread.

    python3 profile_run.py OUT.prof boxbox-args...

cProfile sees only the thread that enabled it, and `boxbox server` serves each connection in
a thread of its own, so every thread here runs under its own profiler: OUT.prof.main and
OUT.prof.tN, merged with merge() (pstats.Stats(*files)).
"""

from __future__ import annotations

import cProfile
import itertools
import pstats
import runpy
import sys
import threading
from pathlib import Path


def merge(prefix: Path) -> pstats.Stats | None:
    files = sorted(str(p) for p in prefix.parent.glob(prefix.name + ".*"))
    return pstats.Stats(*files) if files else None


def main() -> None:
    out = sys.argv[1]
    counter = itertools.count()
    original_run = threading.Thread.run

    def run(self: threading.Thread) -> None:
        prof = cProfile.Profile()
        prof.enable()
        try:
            original_run(self)
        finally:
            prof.disable()
            prof.dump_stats(f"{out}.t{next(counter)}")

    threading.Thread.run = run  # type: ignore[method-assign]
    sys.argv = ["boxbox", *sys.argv[2:]]
    prof = cProfile.Profile()
    prof.enable()
    try:
        runpy.run_module("boxbox", run_name="__main__", alter_sys=True)
    finally:
        prof.disable()
        prof.dump_stats(f"{out}.main")


if __name__ == "__main__":
    main()
