"""Raidfile throughput against plain files on the same filesystem, in the same run.

    python3 benchmarks/raidfile.py            # 256 MiB
    python3 benchmarks/raidfile.py --quick    # 64 MiB, under a minute

Writes fsync in both cases (a raidfile commit always does). Reads are measured twice: "cold"
after dropping the files from the page cache with posix_fadvise(DONTNEED) (what a store
serving old backups sees; no root needed), and "warm" from the page cache (pure CPU: the
raidfile verifies a CRC32 per block and interleaves two stripes, a plain read only copies).
Degraded read: stripe 1 removed, so every block is rebuilt by XOR from stripe 2 and parity.
Ends with `RESULT write_ratio=X read_ratio=X degraded_read_ratio=X` (cold reads).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boxbox.raidfile import DiscSet  # noqa: E402
from boxbox.raidfile.layout import HEADER, STRIPE1, parse_header  # noqa: E402

PIECE = 1 << 20


def drop_cache(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def role_of(path: Path) -> int:
    with open(path, "rb") as f:
        return parse_header(f.read(HEADER.size)).role


def timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 MiB instead of 256 MiB")
    ap.add_argument("--size-mib", type=int, help="data size in MiB")
    ap.add_argument("--repeat", type=int, default=None, help="repetitions, median reported (default 5, 3 for 256 MiB)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp directory)")
    args = ap.parse_args()
    logging.getLogger("boxbox.raidfile").setLevel(logging.ERROR)  # degraded reads warn on every open
    size_mib = args.size_mib or (64 if args.quick else 256)
    repeat = args.repeat or (5 if size_mib <= 64 else 3)
    base = Path(tempfile.mkdtemp(prefix="raidbench.", dir=args.dir))
    try:
        dirs = [base / d for d in "abc"]
        for d in dirs:
            d.mkdir()
        ds = DiscSet("bench", dirs)
        pool = os.urandom(4 * PIECE)
        pieces = [memoryview(pool)[(i % 4) * PIECE : (i % 4 + 1) * PIECE] for i in range(size_mib)]
        plain = base / "plain.bin"
        stripes = [d / "obj.rf" for d in dirs]

        def write_plain() -> None:
            with open(plain, "wb") as f:
                for p in pieces:
                    f.write(p)
                f.flush()
                os.fsync(f.fileno())

        def write_raid() -> None:
            with ds.create("obj") as w:
                for p in pieces:
                    w.write(p)

        def read_plain() -> None:
            with open(plain, "rb") as f:
                while f.read(PIECE):
                    pass

        def read_raid() -> None:
            with ds.open("obj") as r:
                while r.read(PIECE):
                    pass

        results: dict[str, list[float]] = {}

        def rec(name: str, seconds: float) -> None:
            results.setdefault(name, []).append(size_mib * PIECE / seconds / 1e6)

        for _ in range(repeat):
            rec("write plain", timed(write_plain))
            rec("write raid", timed(write_raid))
            drop_cache([plain])
            rec("read cold plain", timed(read_plain))
            drop_cache(stripes)
            rec("read cold raid", timed(read_raid))
            rec("read warm plain", timed(read_plain))
            rec("read warm raid", timed(read_raid))
            moved = base / "stripe1.aside"
            victim = next(p for p in stripes if role_of(p) == STRIPE1)
            shutil.move(victim, moved)
            drop_cache([p for p in stripes if p.exists()])
            rec("degraded cold raid", timed(read_raid))
            rec("degraded warm raid", timed(read_raid))
            shutil.move(moved, victim)

        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"{size_mib} MiB, block size {ds.block_size}, median of {repeat} (MB/s = 10^6 B/s)")
        print(f"{'case':<20} {'plain MB/s':>11} {'raid MB/s':>10} {'ratio':>7}")
        rows = [("write (fsync)", "write plain", "write raid"),
                ("read cold", "read cold plain", "read cold raid"),
                ("read warm", "read warm plain", "read warm raid"),
                ("degraded read cold", "read cold plain", "degraded cold raid"),
                ("degraded read warm", "read warm plain", "degraded warm raid")]
        ratios = {}
        for label, p, r in rows:
            ratios[label] = med[r] / med[p]
            print(f"{label:<20} {med[p]:>11.0f} {med[r]:>10.0f} {ratios[label]:>7.2f}")
        print(f"RESULT write_ratio={ratios['write (fsync)']:.2f} read_ratio={ratios['read cold']:.2f} "
              f"degraded_read_ratio={ratios['degraded read cold']:.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
