"""RAID files: two data stripes and XOR parity on three directories, crash-safe and self-healing.

Start at `DiscSet`: `ds.create(relpath)` streams a new version in, `ds.open(relpath)` reads
it back (rebuilding a missing or damaged stripe on the fly), `check`/`repair`/`scrub` keep
the set healthy. The on-disc format is in `layout`, the atomic commit in `writer`.
"""

from boxbox.raidfile.check import StripeReport, StripeState
from boxbox.raidfile.discset import DiscSet, RebuildSummary
from boxbox.raidfile.reader import RaidReader
from boxbox.raidfile.writer import RaidWriter

__all__ = ["DiscSet", "RaidReader", "RaidWriter", "RebuildSummary", "StripeReport", "StripeState"]
