"""Weak rolling checksum and strong block hash: the two tests a block must pass to be copied.

The weak checksum is Adler-32 (`zlib.adler32`, 1.6 GB/s here against 241 MB/s for
`int.from_bytes(...) % (2**32 - 1)`), a true rolling sum: after one byte leaves and one
enters the window, `a' = a - out + in` and `b' = b - L*out + a' - 1` (both mod 65521).
The strong checksum is 16 bytes of sha256 (1.1-1.5 GB/s with SHA instructions) or
blake2b(digest_size=16) (0.95 GB/s; faster on ARM cores without SHA instructions); the
object header records which by the id in `HASHES`.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import zlib
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache

from boxbox.errors import FormatError

#: hash id as recorded in object headers -> hashlib name
HASHES = {1: "sha256", 2: "blake2b"}
HASH_IDS = {name: hid for hid, name in HASHES.items()}
#: bytes of strong digest kept per block (sha256 truncated; blake2b made with digest_size=16)
STRONG_SIZE = 16
#: Adler-32 modulus
ADLER_MOD = 65521

Buffer = bytes | bytearray | memoryview


def weak_checksum(data: Buffer) -> int:
    """Adler-32 of a whole block: the value the rolling sum has when its window is that block."""
    return zlib.adler32(data)


def strong_function(hash_name: str) -> Callable[[Buffer], bytes]:
    """A fast callable data -> 16-byte digest, for inner loops (no name lookup per call)."""
    if hash_name == "sha256":
        sha256 = hashlib.sha256

        def strong_sha256(data: Buffer) -> bytes:
            return sha256(data).digest()[:STRONG_SIZE]

        return strong_sha256
    if hash_name == "blake2b":
        blake2b = hashlib.blake2b

        def strong_blake2b(data: Buffer) -> bytes:
            return blake2b(data, digest_size=STRONG_SIZE).digest()

        return strong_blake2b
    raise FormatError(f"unknown strong hash {hash_name!r}, expected one of {sorted(HASH_IDS)}")


def strong_many(hash_name: str) -> Callable[[Iterable[Buffer]], Iterator[bytes]]:
    """blocks -> their digests, iterated in C (`map` of the hash, `.digest`, the cut to 16 bytes).

    Saves the ~0.4 us of a Python call per block, a third of the cost of a 4 KiB block.
    """
    digest = operator.methodcaller("digest")
    if hash_name == "sha256":
        sha256 = hashlib.sha256
        cut = operator.itemgetter(slice(0, STRONG_SIZE))
        return lambda blocks: map(cut, map(digest, map(sha256, blocks)))
    if hash_name == "blake2b":
        blake2b = functools.partial(hashlib.blake2b, digest_size=STRONG_SIZE)
        return lambda blocks: map(digest, map(blake2b, blocks))
    raise FormatError(f"unknown strong hash {hash_name!r}, expected one of {sorted(HASH_IDS)}")


def strong_checksum(data: Buffer, hash_name: str) -> bytes:
    """The 16-byte strong digest of a block under the named hash."""
    return strong_function(hash_name)(data)


def uniform_byte(size: int, weak: int) -> int | None:
    """The byte c if `weak` is the Adler-32 of `size` copies of c (a run); else None.

    Solves a = 1 + c*size (mod 65521) for c, then checks b, so recognising runs in a
    signature costs O(1) per block and needs nothing extra stored.
    """
    a = weak & 0xFFFF
    b = weak >> 16
    if size % ADLER_MOD:
        c = (a - 1) * pow(size % ADLER_MOD, -1, ADLER_MOD) % ADLER_MOD
        candidates: range | tuple[int, ...] = (c,) if c < 256 else ()
    else:
        candidates = range(256)
    triangle = size * (size + 1) // 2
    for c in candidates:
        if (1 + c * size) % ADLER_MOD == a and (size + c * triangle) % ADLER_MOD == b:
            return c
    return None


@lru_cache(maxsize=256)
def uniform_digest(hash_name: str, byte: int, size: int) -> bytes:
    """Strong digest of `size` copies of `byte`, cached (zero padding recurs in every file)."""
    return strong_function(hash_name)(bytes((byte,)) * size)


class RollingAdler32:
    """Adler-32 over a sliding window, one byte at a time (plain reference; ~5 MB/s)."""

    __slots__ = ("size", "a", "b")

    def __init__(self, window: Buffer) -> None:
        self.size = len(window)
        value = zlib.adler32(window)
        self.a = value & 0xFFFF
        self.b = value >> 16

    def roll(self, out_byte: int, in_byte: int) -> None:
        """Slide the window one byte: `out_byte` leaves at the front, `in_byte` enters at the back."""
        self.a = (self.a - out_byte + in_byte) % ADLER_MOD
        self.b = (self.b - self.size * out_byte + self.a - 1) % ADLER_MOD

    @property
    def value(self) -> int:
        return (self.b << 16) | self.a
