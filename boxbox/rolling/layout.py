"""Block layout of a new file: how big its blocks are, so a later diff of it costs little.

A diff against a stored version costs two things (measured on the vs_boxbackup workload):
- per block of the old version, whatever changed: its index entry downloaded (62 bytes:
  size, checksums, seal tag, the 18-byte anchor record) and uploaded again in the new
  version's index with a 17-byte reference record, ~141 bytes in all (265 with the
  80-byte anchor records this rule was first measured with);
- per change, about one block of literal data (an edit, an insertion); an append costs
  only its own bytes.
For a file of S bytes with E changes the total (S / B) * 141 + E * B is smallest at
B = sqrt(141 * S / E). The rule takes B ~ sqrt(128 * S) (about one change per version,
appends not counted), as a power of two, within [4 KiB, 512 KiB]:

    file size     16 KiB   512 KiB   1.5 MiB   16 MiB   64 MiB   1 GiB    4 GiB
    block size    4 KiB    8 KiB     16 KiB    32 KiB   64 KiB   256 KiB  512 KiB
    blocks        4        64        96        512      1024     4096     8192

Box Backup's rule (4 KiB doubling until <= 4096 blocks) sent 3.3x the changed bytes for
appends to 1 MiB files here (with 265 bytes a block): 4 KiB blocks made the index traffic
larger than the change.
Fewer blocks also keep the finder's lookup tables, the client's memory and the per-block
work of encode and restore small. Every size is a power of two, so a multiple of 8, which
the candidate filter's word alignment relies on.
"""

from __future__ import annotations

MIN_BLOCK_SIZE = 4096
MAX_BLOCK_SIZE = 512 * 1024
#: B * B >= BALANCE * S / 2 picks the power of two nearest sqrt(BALANCE * S) (in log scale)
BALANCE = 128


def block_size_for(file_size: int) -> int:
    """The block size for a new file of `file_size` bytes."""
    size = MIN_BLOCK_SIZE
    goal = BALANCE * file_size // 2
    while size < MAX_BLOCK_SIZE and size * size < goal:
        size *= 2
    return size


def block_count(file_size: int, block_size: int) -> int:
    """Blocks a file of `file_size` bytes has at `block_size` (the last one may be short)."""
    return -(-file_size // block_size)
