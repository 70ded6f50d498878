"""A one-line progress display for long restores and compares, and the closing summary.

Shown only on a terminal (a script gets the summary alone, or nothing with --quiet); the
line is redrawn at most every REDRAW seconds so drawing never costs measurable time.
"""

from __future__ import annotations

import time
from typing import TextIO

REDRAW = 0.25


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(s: float) -> str:
    s = int(s + 0.5)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """`update(files, bytes)` as work completes; `total_*` may be set once known (for the ETA)."""

    def __init__(self, stream: TextIO | None, verb: str = "restored") -> None:
        self.stream = stream
        self.verb = verb
        self.start = time.monotonic()
        self.total_files = 0
        self.total_bytes = 0
        self._last = 0.0
        self._width = 0

    def update(self, files: int, nbytes: int) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if now - self._last < REDRAW:
            return
        self._last = now
        elapsed = max(now - self.start, 1e-6)
        rate = nbytes / elapsed
        line = f"{self.verb} {files}"
        if self.total_files:
            line += f"/{self.total_files}"
        line += f" files, {human_bytes(nbytes)}, {human_bytes(rate)}/s"
        if self.total_bytes and rate > 0 and nbytes < self.total_bytes:
            line += f", ETA {human_seconds((self.total_bytes - nbytes) / rate)}"
        self._draw(line)

    def _draw(self, line: str) -> None:
        if self.stream is None:
            return
        pad = max(0, self._width - len(line))
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._width = len(line)

    def clear(self) -> None:
        if self.stream is not None and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.start
