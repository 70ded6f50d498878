#!/usr/bin/env python3
"""The client's location scanner against GNU find doing the same walk + stat, same tree, same run.

    python3 benchmarks/scan.py            # 20,000 files
    python3 benchmarks/scan.py --quick    # 2,000 files

A tree of small files (30 per directory, two levels of directories) is generated in a temp
directory, then, with the page cache warm:
  full       a first scan (no previous records): every directory is yielded with its entries,
             given a store id and marked done, as the daemon would
  nochange   a re-scan against the records of the full scan: nothing is yielded
  find       `find DIR -printf '%s %T@\\n' > /dev/null`: a C tool's walk + lstat of the same tree
Each is the median of 3 runs. The scans run in a fresh worker process, which also reports its
peak RSS (`resource.getrusage`), the size of the records and of the saved state file.

The last line is machine-readable:
RESULT full_scan_files_per_s=X nochange_scan_s=X find_ratio=X peak_rss_mib=X
(find_ratio = nochange scan time / find time; the goal is a no-change pass over 20,000 files
well under 0.25 s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from boxbox.backup.scan import RACY_WINDOW  # noqa: E402
REPEAT = 3
PER_DIR = 30


def worker(tree: str) -> None:
    """Time the full and the no-change scans; print one JSON line."""
    from boxbox.backup.scan import Scanner
    from boxbox.backup.state import ClientState, encode

    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    full_times, nochange_times = [], []
    records = None
    files = dirs = 0
    for _ in range(REPEAT):
        t = time.perf_counter()
        scanner = Scanner(tree)
        for n, change in enumerate(scanner, 1):
            change.store_id = n
            change.done = True
        full_times.append(time.perf_counter() - t)
        records, files, dirs = scanner.records, scanner.files, scanner.directories
    for _ in range(REPEAT):
        t = time.perf_counter()
        again = Scanner(tree, previous=records)
        changed = sum(1 for _ in again)
        nochange_times.append(time.perf_counter() - t)
        if changed:
            raise SystemExit(f"no-change scan yielded {changed} directories")
    state = ClientState()
    state.location("bench").records = records
    print(json.dumps({
        "files": files, "dirs": dirs, "full": full_times, "nochange": nochange_times,
        "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "base_kib": base_kib,
        "records_bytes": len(records.data) + 4 * len(records.offsets), "state_bytes": len(encode(state)),
    }))


def make_tree(root: Path, files: int) -> None:
    n_dirs = max(1, files // PER_DIR)
    made = 0
    for d in range(n_dirs):
        path = root / f"group{d // 20:03d}" / f"dir{d:05d}"
        path.mkdir(parents=True)
        for f in range(PER_DIR if d < n_dirs - 1 else files - made):
            (path / f"file{f:03d}.dat").write_bytes(os.urandom((d * 31 + f * 17) % 2048))
            made += 1


def time_find(tree: Path) -> list[float]:
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        subprocess.run(["find", str(tree), "-printf", r"%s %T@\n"], stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 files instead of 20,000")
    parser.add_argument("--files", type=int, help="number of files (overrides --quick)")
    parser.add_argument("--worker", metavar="TREE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return 0
    n = args.files or (2_000 if args.quick else 20_000)
    if not shutil.which("find"):
        print("GNU find is needed for the comparison", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="boxbox-scan-bench-"))
    try:
        tree = work / "tree"
        t = time.perf_counter()
        make_tree(tree, n)
        print(f"generated {n} files in {time.perf_counter() - t:.1f} s under {tree}")
        time.sleep(RACY_WINDOW)  # a real run comes long after the changes, not within the racy window
        subprocess.run(["find", str(tree)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
        find_times = time_find(tree)
        out = subprocess.run([sys.executable, __file__, "--worker", str(tree)], capture_output=True, text=True,
                             check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        find_times += time_find(tree)  # before and after, against drift on a shared machine
    finally:
        shutil.rmtree(work)
    full = statistics.median(r["full"])
    nochange = statistics.median(r["nochange"])
    find_s = statistics.median(find_times)
    entries = r["files"] + r["dirs"]
    rss = r["rss_kib"] / 1024
    print(f"{r['files']} files in {r['dirs']} directories, medians of {REPEAT} (find: {len(find_times)})")
    print(f"{'pass':<24}{'seconds':>10}{'entries/s':>12}{'x find':>9}")
    for name, s in (("boxbox full scan", full), ("boxbox no-change scan", nochange), ("find -printf", find_s)):
        print(f"{name:<24}{s:>10.4f}{entries / s:>12,.0f}{s / find_s:>9.2f}")
    print(f"records {r['records_bytes']:,} B ({r['records_bytes'] / r['dirs']:.0f} B per directory), "
          f"state file {r['state_bytes']:,} B, worker peak RSS {rss:.1f} MiB "
          f"({r['base_kib'] / 1024:.1f} MiB of it before the first scan: interpreter and imports)")
    print(f"RESULT full_scan_files_per_s={r['files'] / full:.0f} nochange_scan_s={nochange:.4f} "
          f"find_ratio={nochange / find_s:.2f} peak_rss_mib={rss:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
