"""Encode and decode a big file object against raw zlib-1 + raw AEAD over the same bytes, same run.

    python3 benchmarks/objects.py            # 256 MiB: half random, half real text
    python3 benchmarks/objects.py --quick    # 64 MiB, under a minute

The test file is written to a temporary directory in 1 MiB pieces and never held in memory.
The baseline cuts the same bytes into the same blocks boxbox uses and times, per block,
zlib.compress(level 1) + AES-256-GCM seal (encode) and AES-256-GCM open + zlib.decompress
(decode). Each repetition is a fresh child process (so the peak RSS is its own) that runs
the baseline, then boxbox: encode from the file into a null sink (as into a socket), and
decode an object it wrote before (untimed) into a null sink. Its ratio is boxbox time /
baseline time of that pair; the ratio reported is the median of these (the machine is
shared, so runs close in time compare best). The last line is
    RESULT encode_ratio=X decode_ratio=X peak_rss_mib=X
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1 << 20
TEXT_ROOTS = ("/usr/share/doc", "/usr/lib/python3", "/usr/lib/python3.11", "/usr/share")


def text_files():
    """Real text: documentation and Python sources (compresses ~3:1 like typical user data)."""
    for root in TEXT_ROOTS:
        for dirpath, _, files in os.walk(root):
            for f in sorted(files):
                if f.endswith((".py", ".txt", ".html", ".md", ".rst", "copyright", ".css", ".js", ".xml", ".conf")):
                    yield os.path.join(dirpath, f)


def make_file(path: Path, size: int) -> None:
    """First half os.urandom, second half text, written in 1 MiB pieces."""
    half = size // 2
    with open(path, "wb") as out:
        left = half
        while left:
            n = min(MIB, left)
            out.write(os.urandom(n))
            left -= n
        left = size - half
        while left:
            for name in text_files():
                try:
                    data = Path(name).read_bytes()[:left]
                except OSError:
                    continue
                out.write(data)
                left -= len(data)
                if not left:
                    break
            else:
                if left == size - half:
                    raise SystemExit("no text files found under " + ", ".join(TEXT_ROOTS))


def baseline(path: Path, block: int) -> dict[str, float]:
    """Seconds for raw zlib-1 and raw AES-256-GCM over the same blocks, each way."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    t = dict.fromkeys(("deflate", "seal", "open", "inflate"), 0.0)
    clock = time.perf_counter
    with open(path, "rb") as f:
        while chunk := f.read(block):
            t0 = clock()
            packed = zlib.compress(chunk, 1)
            t1 = clock()
            sealed = aead.encrypt(nonce, packed, b"ad")
            t2 = clock()
            opened = aead.decrypt(nonce, sealed, b"ad")
            t3 = clock()
            zlib.decompress(opened)
            t4 = clock()
            t["deflate"] += t1 - t0
            t["seal"] += t2 - t1
            t["open"] += t3 - t2
            t["inflate"] += t4 - t3
    t["encode"] = t["deflate"] + t["seal"]
    t["decode"] = t["open"] + t["inflate"]
    return t


def child(path: Path, obj: Path) -> None:
    """Runs in its own process: the baseline, then boxbox encode and decode; prints JSON."""
    import io

    from boxbox.crypto.keys import Keys
    from boxbox.objects import file as fo
    from boxbox.objects.attributes import Attributes, FileType

    class Null(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b) -> int:  # type: ignore[override]
            return len(b)

    from boxbox.rolling.layout import block_size_for

    keys = Keys.from_master(os.urandom(1024))
    attrs = Attributes(FileType.REGULAR, 0o644, 0, 0, 1)
    with open(path, "rb") as src, open(obj, "wb") as sink:
        result = fo.encode_file(keys, src, sink, container_id=1, name=b"bench", attributes=attrs)
    out = baseline(path, block_size_for(path.stat().st_size))
    t0 = time.perf_counter()
    with open(path, "rb") as src:
        fo.encode_file(keys, src, Null(), container_id=1, name=b"bench", attributes=attrs)
    t1 = time.perf_counter()
    with open(obj, "rb") as src:
        fo.decode_file(keys, src, Null(), label="bench")
    t2 = time.perf_counter()
    out.update({"box_encode": t1 - t0, "box_decode": t2 - t1, "stored": result.stored_size,
                "blocks": result.block_count, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    print(json.dumps(out))


def run_child(path: Path, obj: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(path), str(obj)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB instead of 256 MiB")
    parser.add_argument("--size-mib", type=int, help="file size in MiB")
    parser.add_argument("--repeat", type=int, help="repetitions, median reported (default 3; 5 with --quick)")
    parser.add_argument("--child", nargs=2, metavar=("FILE", "OBJECT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
        return 0
    from boxbox.rolling.layout import block_size_for

    size = (args.size_mib or (64 if args.quick else 256)) * MIB
    repeat = args.repeat or (5 if args.quick else 3)
    small = 16 * MIB
    block = block_size_for(size)
    with tempfile.TemporaryDirectory(prefix="boxbox-bench-") as tmp:
        data, obj = Path(tmp) / "data", Path(tmp) / "object"
        make_file(data, size)
        runs = [run_child(data, obj) for _ in range(repeat)]
        make_file(Path(tmp) / "small", small)
        small_rss = run_child(Path(tmp) / "small", obj)["rss_mib"]
    med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    xe, xd = med["box_encode"], med["box_decode"]
    re_ = statistics.median(r["box_encode"] / r["encode"] for r in runs)
    rd = statistics.median(r["box_decode"] / r["decode"] for r in runs)
    rss = max(r["rss_mib"] for r in runs)
    mb = size / 1e6
    print(f"file: {size // MIB} MiB (half os.urandom, half text), blocks of {block // 1024} KiB "
          f"({runs[0]['blocks']} blocks), stored {runs[0]['stored'] / size:.3f} of clear size; "
          f"median of {repeat}")
    print(f"{'':28} {'seconds':>8} {'MB/s':>8} {'ratio':>6}")  # ratio: median of paired runs
    rows = [("raw zlib-1 compress", med["deflate"], None), ("raw AES-256-GCM seal", med["seal"], None),
            ("baseline encode (sum)", med["encode"], 1.0), ("boxbox encode", xe, re_),
            ("raw AES-256-GCM open", med["open"], None), ("raw zlib inflate", med["inflate"], None),
            ("baseline decode (sum)", med["decode"], 1.0), ("boxbox decode (verified)", xd, rd)]
    for label, t, ratio in rows:
        print(f"{label:28} {t:8.3f} {mb / t:8.1f} {'' if ratio is None else f'{ratio:6.2f}':>6}")
    print(f"peak RSS of the boxbox process: {rss:.1f} MiB at {size // MIB} MiB, {small_rss:.1f} MiB at "
          f"{small // MIB} MiB")
    print(f"RESULT encode_ratio={re_:.3f} decode_ratio={rd:.3f} peak_rss_mib={rss:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
