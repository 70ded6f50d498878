"""Process-wide counts of RAID events, read by the server's /metrics (raidfile must not import the store)."""

from __future__ import annotations

import threading

_lock = threading.Lock()
_counts = {"degraded_reads": 0, "repairs": 0}


def bump(event: str) -> None:
    """Count one `degraded_reads` (a file read from two stripes) or `repairs` (a file rebuilt)."""
    with _lock:
        _counts[event] += 1


def snapshot() -> dict[str, int]:
    with _lock:
        return dict(_counts)
