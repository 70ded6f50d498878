#!/usr/bin/env python3
"""Delta engine against librsync's `rdiff`, same files, same block size, same run.

    python3 benchmarks/rolling.py            # 64 MiB cases + 512 MiB case (a few minutes)
    python3 benchmarks/rolling.py --quick    # 16 MiB cases only, ~30 s

Cases, on random data and on real data (files of /usr/lib and /usr/share, concatenated):
  i    10 scattered small edits (overwrites, inserts, deletes of 1-64 bytes)
  ii   one byte inserted near the start
  iii  10% of the blocks rewritten in place
  iv   entirely new data
  big  512 MiB of random data with ~1% changed (full run only)

boxbox time = `signature_of(old)` + `delta(sig, new)` + `encode_delta` to a file, measured
inside a fresh worker process (interpreter start-up excluded), which also reports its
peak RSS. rdiff time = `rdiff signature -b <block>` + `rdiff delta`, less rdiff's own
process start-up (the same two commands on empty files, measured in the same run: ~2 ms),
since boxbox's interpreter start-up is not counted either. Both are CPU time (user + sys),
so other work on a shared machine does not skew the ratio; the wall-clock ratio is
printed beside it. Each figure is the median of --runs runs (default 5), boxbox and rdiff
alternating.
Ratios are boxbox / rdiff (time: lower is better). Every boxbox delta is patched back
and compared with the new file (untimed). Without rdiff (Debian package `rdiff`:
`apt-get install -y rdiff`) the rdiff columns are skipped.

The last line is machine-readable:
RESULT case_i_ratio=X case_ii_ratio=X case_iii_ratio=X case_iv_ratio=X size_ratio_max=X peak_rss_mib=X
(the worse of random and real data for each ratio).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


# -- worker: runs in its own process so its peak RSS is the engine's ----------------
def worker(old: str, new: str, block_size: int, out: str, hash_name: str, verify: bool) -> None:
    sys.path.insert(0, str(ROOT))
    from boxbox.rolling.delta import delta
    from boxbox.rolling.patch import apply, decode_delta, encode_delta
    from boxbox.rolling.signature import signature_of

    w0, t0 = time.perf_counter(), time.process_time()
    with open(old, "rb") as f:
        sig = signature_of(f, block_size, hash_name)
    t1 = time.process_time()
    with open(new, "rb") as f, open(out, "wb") as o:
        for piece in encode_delta(delta(sig, f)):
            o.write(piece)
    w2, t2 = time.perf_counter(), time.process_time()
    peak = _peak_rss_mib()
    ok = None
    if verify:
        offsets = []
        at = 0
        for b in sig.blocks:
            offsets.append(at)
            at += b.size
        h = hashlib.sha256()

        class Sink:
            def write(self, data: bytes) -> None:
                h.update(data)

        def chunks():
            with open(out, "rb") as d:
                while piece := d.read(MIB):
                    yield piece

        with open(old, "rb") as f:
            def read_block(k: int) -> bytes:
                f.seek(offsets[k])
                return f.read(sig.blocks[k].size)

            apply(decode_delta(chunks()), read_block, Sink())
        ok = h.digest() == _sha256_file(new)
    print(json.dumps({"sig": t1 - t0, "delta": t2 - t1, "total": t2 - t0, "wall": w2 - w0, "size": os.path.getsize(out),
                      "peak_rss_mib": peak, "ok": ok}))


def _peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM restarts at exec; ru_maxrss would include the
    parent's size at fork (the benchmark holds the test files in memory)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sha256_file(path: str) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(MIB):
            h.update(piece)
    return h.digest()


# -- data --------------------------------------------------------------------------
def real_corpus(size: int, skip: int = 0) -> bytes:
    """`size` bytes of concatenated files from /usr/lib and /usr/share, after skipping `skip`."""
    parts: list[bytes] = []
    got = 0
    for top in ("/usr/lib", "/usr/share"):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                try:
                    with open(path, "rb") as f:
                        data = f.read(size + skip - got)
                except OSError:
                    continue
                if skip:
                    cut = min(skip, len(data))
                    data = data[cut:]
                    skip -= cut
                parts.append(data)
                got += len(data)
                if got >= size:
                    return b"".join(parts)[:size]
    raise SystemExit(f"not enough files under /usr for {size + skip} bytes of real data")


def random_bytes(rnd: random.Random, size: int) -> bytes:
    """`randbytes` in 64 MiB pieces (one call is limited to 2**31 bits)."""
    return b"".join(rnd.randbytes(min(64 * MIB, size - at)) for at in range(0, size, 64 * MIB))


def edit_scattered(old: bytes, rnd: random.Random, edits: int = 10) -> bytes:
    new = bytearray(old)
    for i in range(edits):
        at = rnd.randrange(len(new) * i // edits, len(new) * (i + 1) // edits)
        n = rnd.randrange(1, 65)
        kind = i % 3
        if kind == 0:
            new[at:at + n] = rnd.randbytes(n)
        elif kind == 1:
            new[at:at] = rnd.randbytes(n)
        else:
            del new[at:at + n]
    return bytes(new)


def rewrite_blocks(old: bytes, block_size: int, fraction: float, rnd: random.Random) -> bytes:
    new = bytearray(old)
    nblocks = len(old) // block_size
    for k in rnd.sample(range(nblocks), int(nblocks * fraction)):
        new[k * block_size:(k + 1) * block_size] = rnd.randbytes(block_size)
    return bytes(new)


def make_cases(kind: str, size: int, block_size: int) -> tuple[bytes, dict[str, bytes]]:
    rnd = random.Random(f"{kind}-{size}")
    if kind == "random":
        old = random_bytes(rnd, size)
        fresh = random_bytes(rnd, size)
    else:
        old = real_corpus(size)
        fresh = real_corpus(size, skip=size)
    return old, {
        "i": edit_scattered(old, rnd),
        "ii": old[:1000] + b"!" + old[1000:],
        "iii": rewrite_blocks(old, block_size, 0.10, rnd),
        "iv": fresh,
    }


def make_big(size: int, block_size: int) -> tuple[bytes, bytes]:
    rnd = random.Random(f"big-{size}")
    old = random_bytes(rnd, size)
    new = rewrite_blocks(old, block_size, 0.009, rnd)
    return old, edit_scattered(new, rnd, edits=20)


# -- runners -----------------------------------------------------------------------
def run_boxbox(work: Path, old: Path, new: Path, block_size: int, hash_name: str, verify: bool) -> dict:
    out = work / "boxbox.delta"
    proc = subprocess.run([sys.executable, __file__, "--worker", str(old), str(new), str(block_size), str(out),
                           hash_name, "1" if verify else "0"], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"boxbox worker failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_rdiff(rdiff: str, work: Path, old: Path, new: Path, block_size: int) -> dict:
    sig = work / "rdiff.sig"
    out = work / "rdiff.delta"
    w0, t0 = time.perf_counter(), _children_cpu()
    subprocess.run([rdiff, "-f", "-b", str(block_size), "signature", str(old), str(sig)], check=True)
    t1 = _children_cpu()
    subprocess.run([rdiff, "-f", "delta", str(sig), str(new), str(out)], check=True)
    w2, t2 = time.perf_counter(), _children_cpu()
    return {"sig": t1 - t0, "delta": t2 - t1, "total": t2 - t0, "wall": w2 - w0, "size": os.path.getsize(out)}


def rdiff_startup(rdiff: str, work: Path, runs: int) -> dict:
    """rdiff's fixed cost: signature and delta of an empty file (process start-up, no data)."""
    empty = work / "empty"
    empty.write_bytes(b"")
    times = [run_rdiff(rdiff, work, empty, empty, 4096) for _ in range(runs)]
    return {k: statistics.median(t[k] for t in times) for k in ("sig", "delta", "total", "wall")}


def measure(work: Path, name: str, old: bytes, new: bytes, block_size: int, args: argparse.Namespace,
            rdiff: str | None) -> dict:
    old_p = work / "old"
    new_p = work / "new"
    old_p.write_bytes(old)
    new_p.write_bytes(new)
    bb_runs = []
    rd_runs = []
    for i in range(args.runs):  # alternating, so a burst of load elsewhere hits both
        bb_runs.append(run_boxbox(work, old_p, new_p, block_size, args.hash, verify=(i == 0)))
        if i == 0 and bb_runs[0]["ok"] is False:
            raise SystemExit(f"{name}: boxbox delta does not patch back to the new file")
        if rdiff:
            rd_runs.append(run_rdiff(rdiff, work, old_p, new_p, block_size))
    bb = {k: statistics.median(r[k] for r in bb_runs) for k in ("sig", "delta", "total", "wall")}
    bb["size"] = bb_runs[0]["size"]
    bb["peak_rss_mib"] = max(r["peak_rss_mib"] for r in bb_runs)
    row = {"name": name, "mib": len(old) / MIB, "block": block_size, "bb": bb}
    if rd_runs:
        rd = {k: statistics.median(r[k] for r in rd_runs) - args.rdiff_startup[k]
              for k in ("sig", "delta", "total", "wall")}
        rd["size"] = rd_runs[0]["size"]
        row["rd"] = rd
        row["ratio"] = bb["total"] / rd["total"]
        row["wall_ratio"] = bb["wall"] / rd["wall"]
        row["size_ratio"] = bb["size"] / rd["size"]
    _print_row(row)
    return row


def _print_row(row: dict) -> None:
    bb = row["bb"]
    mbps = row["mib"] * MIB / 1e6 / bb["total"]
    line = (f"{row['name']:<12} {row['mib']:6.0f} {row['block'] // 1024:5d}K "
            f"{bb['sig']:7.3f} {bb['delta']:7.3f} {bb['total']:7.3f} {mbps:7.0f} {bb['size']:11d} "
            f"{bb['peak_rss_mib']:6.1f}")
    if "rd" in row:
        rd = row["rd"]
        line += (f" | {rd['sig']:7.3f} {rd['delta']:7.3f} {rd['total']:7.3f} {rd['size']:11d}"
                 f" | {row['ratio']:5.2f} {row['wall_ratio']:5.2f} {row['size_ratio']:6.3f}")
    print(line, flush=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        old, new, bs, out, hash_name, verify = sys.argv[2:8]
        worker(old, new, int(bs), out, hash_name, verify == "1")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 MiB cases only (~30 s)")
    parser.add_argument("--size-mib", type=int, help="size of the four cases (default 64, 16 with --quick)")
    parser.add_argument("--big-mib", type=int, default=512, help="size of the ~1%% changed case (0 skips it)")
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement, median taken (default 5)")
    parser.add_argument("--hash", default="sha256", choices=["sha256", "blake2b"])
    parser.add_argument("--kinds", default="random,real", help="data kinds of the four cases (empty: none)")
    args = parser.parse_args()
    size = (args.size_mib or (16 if args.quick else 64)) * MIB
    if args.quick:
        args.big_mib = 0
    sys.path.insert(0, str(ROOT))
    from boxbox.rolling.layout import block_size_for

    rdiff = shutil.which("rdiff")
    if rdiff is None:
        print("rdiff not found: rdiff columns skipped (install it with `apt-get install -y rdiff`)")
    block_size = block_size_for(size)
    print(f"hash {args.hash}, {args.runs} run(s) per figure (median); times are CPU seconds (user+sys; "
          f"robust on a shared machine), `wall` the wall-clock ratio; MB/s = 10^6 B/s of the new file "
          f"through boxbox signature+delta (CPU time)")
    with tempfile.TemporaryDirectory(prefix="boxbox-bench-") as tmp:
        args.rdiff_startup = rdiff_startup(rdiff, Path(tmp), 2 * args.runs + 1) if rdiff else {}
    if rdiff:
        print(f"rdiff start-up (subtracted from its times): {1000 * args.rdiff_startup['total']:.1f} ms CPU")
    print(f"{'case':<12} {'MiB':>6} {'block':>6} {'bb sig':>7} {'delta':>7} {'total':>7} {'MB/s':>7} "
          f"{'bb bytes':>11} {'RSS':>6} | {'rd sig':>7} {'delta':>7} {'total':>7} {'rd bytes':>11} | "
          f"{'ratio':>5} {'wall':>5} {'size':>6}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="boxbox-bench-") as tmp:
        work = Path(tmp)
        for kind in filter(None, args.kinds.split(",")):
            old, cases = make_cases(kind, size, block_size)
            for case, new in cases.items():
                rows.append(measure(work, f"{kind}/{case}", old, new, block_size, args, rdiff))
        if args.big_mib:
            big = args.big_mib * MIB
            bbs = block_size_for(big)
            old, new = make_big(big, bbs)
            rows.append(measure(work, "random/big", old, new, bbs, args, rdiff))
            del old, new
    if not rows:
        return 0
    peak = max(r["bb"]["peak_rss_mib"] for r in rows)
    if not rdiff:
        print(f"RESULT case_i_ratio=nan case_ii_ratio=nan case_iii_ratio=nan case_iv_ratio=nan "
              f"size_ratio_max=nan peak_rss_mib={peak:.1f}")
        return 0

    def worst(case: str) -> float:
        return max((r["ratio"] for r in rows if r["name"].endswith("/" + case)), default=float("nan"))

    big = [r for r in rows if r["name"].endswith("/big")]
    if big:
        print(f"big case ratio {big[0]['ratio']:.2f}")
    print(f"RESULT case_i_ratio={worst('i'):.2f} case_ii_ratio={worst('ii'):.2f} "
          f"case_iii_ratio={worst('iii'):.2f} case_iv_ratio={worst('iv'):.2f} "
          f"size_ratio_max={max(r['size_ratio'] for r in rows):.3f} peak_rss_mib={peak:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
