"""Block layout of a new file: how big its blocks are, so every file has few of them.

Box Backup's rule, kept: start at 4 KiB and double until the file has at most 4096 blocks,
never past 512 KiB. Why these numbers:
- the finder's lookup tables hold one strong digest and eight candidate words per block;
  set and dict lookups cost 35-60 ns up to ~16k keys and 130-230 ns past ~1M keys
  (measured here), so a bounded block count keeps every probe in the fast regime;
- a changed byte costs one block of literal data in the delta, so blocks should be as
  small as the table bound allows (4 KiB up to 16 MiB files; 16 KiB for 64 MiB);
- 512 KiB caps the delta cost of one changed byte and the finder's lookahead (memory)
  for huge files; past 2 GiB the count grows again (8192 blocks at 4 GiB), still cheap;
- every size is a multiple of 8, which the candidate filter's word alignment relies on.
"""

from __future__ import annotations

MIN_BLOCK_SIZE = 4096
MAX_BLOCK_SIZE = 512 * 1024
TARGET_BLOCKS = 4096


def block_size_for(file_size: int) -> int:
    """The block size for a new file of `file_size` bytes."""
    size = MIN_BLOCK_SIZE
    while size < MAX_BLOCK_SIZE and -(-file_size // size) > TARGET_BLOCKS:
        size *= 2
    return size


def block_count(file_size: int, block_size: int) -> int:
    """Blocks a file of `file_size` bytes has at `block_size` (the last one may be short)."""
    return -(-file_size // block_size)
