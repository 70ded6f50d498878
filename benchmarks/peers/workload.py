"""The generated workload for vs_boxbackup.py: a deterministic tree and its mutation.

At scale 1.0: 10,000 small files (100 B - 16 KiB, half word text, half random bytes) in
nested directories (one of them, `projects/archive`, holds 500 files and is renamed by the
mutation), 100 medium files (128 KiB - 1.5 MiB), and 3 large files of 40, 50 and 60 MB whose
1 MiB chunks alternate random / word text (so half compressible, half random). Total ~300 MB.
Every byte comes from `random.Random(seed)`, so two runs make the same tree.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

WORDS = ("backup store client server block index delta rolling checksum archive restore file "
         "directory account limit housekeeping object version patch stream cipher header name "
         "attribute time mode owner group size count marker login session query compare the a of "
         "and to in is it that for on with as was by this be at from or an are have not").split()
MIB = 1 << 20


def text(rng: random.Random, n: int) -> bytes:
    """n bytes of word text (compresses about 3-4x with zlib)."""
    out = bytearray()
    while len(out) < n:
        out += (" ".join(rng.choices(WORDS, k=2000)) + "\n").encode()
    return bytes(out[:n])


def _large(rng: random.Random, size: int) -> bytes:
    parts = []
    for i in range(0, size, MIB):
        n = min(MIB, size - i)
        parts.append(rng.randbytes(n) if (i // MIB) % 2 == 0 else text(rng, n))
    return b"".join(parts)


def layout(scale: float) -> dict[str, int]:
    return {
        "small": max(200, int(10_000 * scale)),
        "archive": max(50, int(500 * scale)),
        "medium": max(5, int(100 * scale)),
        "large_mb": [max(1, round(mb * scale)) for mb in (40, 50, 60)],  # type: ignore[dict-item]
    }


def make_tree(root: Path, scale: float, seed: int = 20261126) -> tuple[int, int]:
    """Write the tree; returns (files, bytes)."""
    rng = random.Random(seed)
    lay = layout(scale)
    root.mkdir(parents=True)
    files = 0
    total = 0

    def put(path: Path, data: bytes) -> None:
        nonlocal files, total
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files += 1
        total += len(data)

    # small files: home/<a>/<b>/file, ~40 per directory, two levels deep
    n_small = lay["small"] - lay["archive"]
    for i in range(n_small):
        d = root / "home" / f"u{i // 800:02d}" / f"d{(i // 40) % 20:02d}"
        size = int(rng.expovariate(1 / 5000)) % 16384 + 100
        data = text(rng, size) if i % 2 == 0 else rng.randbytes(size)
        put(d / (f"note{i:05d}.txt" if i % 2 == 0 else f"blob{i:05d}.bin"), data)
    for i in range(lay["archive"]):
        size = int(rng.expovariate(1 / 3000)) % 8192 + 100
        put(root / "projects" / "archive" / f"item{i:04d}.txt", text(rng, size))
    for i in range(lay["medium"]):
        size = rng.randrange(128 * 1024, 1536 * 1024)
        data = text(rng, size) if i % 2 == 0 else rng.randbytes(size)
        put(root / "media" / f"m{i // 25}" / f"medium{i:03d}.dat", data)
    for i, mb in enumerate(lay["large_mb"]):  # type: ignore[arg-type]
        put(root / "big" / f"large{i}.img", _large(rng, mb * 1_000_000))
    return files, total


def mutate(root: Path, scale: float, seed: int = 7) -> dict[str, int]:
    """The incremental change; returns counts of what was done."""
    rng = random.Random(seed)
    lay = layout(scale)
    small = sorted((root / "home").rglob("*.*"))
    counts = {"edited": 0, "appended": 0, "deleted": 0, "new": 0}
    # 1% of small files edited in place (same size, a few bytes in the middle)
    for p in rng.sample(small, max(1, len(small) // 100)):
        data = bytearray(p.read_bytes())
        at = len(data) // 2
        patch = rng.randbytes(min(16, len(data) - at))
        data[at:at + len(patch)] = patch
        p.write_bytes(bytes(data))
        counts["edited"] += 1
    # appends to a fifth of the medium files
    medium = sorted((root / "media").rglob("*.dat"))
    for p in medium[::5]:
        with open(p, "ab") as f:
            f.write(rng.randbytes(rng.randrange(4096, 65536)))
        counts["appended"] += 1
    # 100 bytes inserted near the start of a large file (its first MiB is random)
    big0 = root / "big" / "large0.img"
    data = big0.read_bytes()
    big0.write_bytes(data[:4000] + rng.randbytes(100) + data[4000:])
    del data
    # 1 MiB overwritten in the middle of another
    big1 = root / "big" / "large1.img"
    size = big1.stat().st_size
    with open(big1, "r+b") as f:
        f.seek(max(0, size // 2 - MIB // 2))
        f.write(rng.randbytes(min(MIB, size)))
    # the archive directory renamed
    (root / "projects" / "archive").rename(root / "projects" / "archive-2026")
    # deletions (0.5% of small files) and new files (1% of small, in a new directory and old ones)
    left = [p for p in small if p.exists()]
    for p in rng.sample(left, max(1, len(left) // 200)):
        p.unlink()
        counts["deleted"] += 1
    for i in range(max(2, lay["small"] // 100)):
        d = root / "home" / ("new" if i % 2 else "u00") / "fresh"
        d.mkdir(parents=True, exist_ok=True)
        size = rng.randrange(100, 12000)
        (d / f"new{i:04d}.txt").write_bytes(text(rng, size) if i % 3 else rng.randbytes(size))
        counts["new"] += 1
    return counts


def digest_tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every regular file (directories as 'dir')."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames:
            out[os.path.normpath(os.path.join(rel, n))] = "dir"
        for n in filenames:
            full = os.path.join(dirpath, n)
            h = hashlib.sha256()
            with open(full, "rb") as f:
                while chunk := f.read(MIB):
                    h.update(chunk)
            out[os.path.normpath(os.path.join(rel, n))] = h.hexdigest()
    return out


def compare(expected: dict[str, str], got: dict[str, str]) -> str:
    """'' when identical, else a short description of the differences."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    differ = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if not (missing or extra or differ):
        return ""
    return (f"{len(missing)} missing (e.g. {missing[:2]}), {len(extra)} extra (e.g. {extra[:2]}), "
            f"{len(differ)} differ (e.g. {differ[:2]})")


def store_size(*dirs: Path) -> int:
    """Apparent size (sum of st_size) of every file under dirs."""
    total = 0
    for d in dirs:
        for dirpath, _, filenames in os.walk(d):
            for n in filenames:
                try:
                    total += os.lstat(os.path.join(dirpath, n)).st_size
                except FileNotFoundError:
                    pass
    return total
