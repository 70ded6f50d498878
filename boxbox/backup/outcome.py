"""What a run is told and what it reports, apart from the uploader that does the work.

Kept out of `uploader.py` so that `run.py` and the daemon load without the upload stack
(wire, TLS, objects, rolling, `cryptography`): a run that finds nothing changed imports
none of it (measured: 31 -> ~21 MiB peak RSS, ~60 ms less start-up on the no-change run).
Plain classes rather than dataclasses for the same reason: `dataclasses` brings `inspect`,
`ast` and `dis` (~5 ms and ~1 MiB, plus ~0.4 ms a class) into a run that needs none of it.
"""

from __future__ import annotations

from typing import NamedTuple


class Settings(NamedTuple):
    """The `[client]` keys the uploader needs, typed."""

    cipher: str
    lazy: bool = False
    minimum_file_age: float = 6 * 3600.0
    max_upload_wait: float = 24 * 3600.0
    max_file_time_in_future: float = 2 * 86400.0
    file_tracking_size_threshold: int = 65536
    diffing_upload_size_threshold: int = 8192
    maximum_diffing_time: float = 120.0
    keep_alive_time: float = 120.0
    max_upload_rate: int = 0


class RunStats:
    """What one run did; shown by `boxbox ctl status`."""

    __slots__ = ("files_uploaded", "diffs", "file_bytes", "new_bytes", "attributes_changed", "directories_created",
                 "moved", "deleted", "waiting", "read_errors", "upload_errors")

    def __init__(self) -> None:
        self.files_uploaded = 0
        self.diffs = 0
        self.file_bytes = 0  # clear bytes of the files uploaded
        self.new_bytes = 0  # clear bytes sent as new data (whole files + new parts of diffs)
        self.attributes_changed = 0
        self.directories_created = 0
        self.moved = 0
        self.deleted = 0
        self.waiting = 0  # lazy mode: files not old enough yet
        self.read_errors: list[str] = []
        self.upload_errors: list[str] = []


class Stopped(Exception):
    """The daemon was asked to stop mid-run (internal: the run ends without saving)."""
