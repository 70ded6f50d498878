"""The one atomic writer: temp file in the same directory, fsync, rename, fsync the directory.

A reader sees the old content or the new content, never a mix, whatever kills the writer.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename in `path` durable (POSIX needs the directory itself synced)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicWriter:
    """Context manager yielding a binary file; on clean exit it replaces `path` atomically.

    An exception inside the block (or `abort()`) unlinks the temp file and leaves the
    previous content of `path` untouched.
    """

    def __init__(self, path: str | os.PathLike[str], mode: int = 0o600) -> None:
        self.path = Path(path)
        self.mode = mode
        self._file: BinaryIO | None = None
        self._tmp: str | None = None

    def __enter__(self) -> BinaryIO:
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.fchmod(fd, self.mode)
        self._file = os.fdopen(fd, "wb")
        return self._file

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def commit(self) -> None:
        assert self._file is not None and self._tmp is not None
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._tmp = None
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically and durably."""
    with AtomicWriter(path, mode) as f:
        f.write(data)


def create_exclusive(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write `data` to a new file at `path` atomically; refuse if `path` already exists.

    The temp file is hard-linked into place, so a concurrent creator cannot be overwritten.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # raises FileExistsError rather than replacing
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)
