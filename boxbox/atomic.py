"""The one atomic writer: temp file in the same directory, fsync, rename, fsync the directory.

A reader sees the old content or the new content, never a mix, whatever kills the writer.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import BinaryIO


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new file `.NAME.<random>.tmp` in `path`'s directory, opened O_EXCL, mode 0600: (fd, name).

    Not `tempfile.mkstemp`: importing tempfile pulls in shutil, random, bz2 and lzma, several
    milliseconds and ~1 MiB in every role for one call."""
    while True:
        tmp = os.path.join(path.parent, f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue


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
        fd, self._tmp = _temp_beside(self.path)
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
    fd, tmp = _temp_beside(path)
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
