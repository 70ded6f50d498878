"""Test-only storage fault hook: runs `boxbox` with the raidfile layer's `os` calls wrapped.

Used only as `python -m tests.fault.shim server ...` by the fault tests; nothing in
boxbox reads its variable. BOXBOX_TEST_FAULT_CONTROL names a JSON file read on every
hooked call (re-read when its mtime changes; absent = no fault):

    {"op": "writev" | "fsync" | "replace" | "pread",  # which call fails
     "errno": "ENOSPC" | "EIO" | ...,                 # how it fails
     "nth": 1,                                         # the Nth call after the file changed fails ...
     "sticky": true,                                   # ... and every later one too
     "short": false,                                   # writev: write half and return short instead
     "path": "disc0"}                                  # only calls on files whose path contains this

The hook swaps the `os` name inside `boxbox.raidfile.writer`, `boxbox.raidfile.reader` and
`boxbox.raidfile.discset` for a proxy, so the store code itself is not edited.
"""

from __future__ import annotations

import errno as errno_mod
import json
import os
import sys
import threading
from typing import Any

_real = os


class _Control:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self.mtime: float | None = None
        self.spec: dict[str, Any] = {}
        self.count = 0
        self.lock = threading.Lock()

    def fault(self, op: str, fd_or_path: int | str | None = None) -> dict[str, Any] | None:
        """The spec when this call must fail, else None."""
        if not self.path:
            return None
        try:
            mtime = _real.stat(self.path).st_mtime_ns
        except OSError:
            self.mtime, self.spec = None, {}
            return None
        with self.lock:
            if mtime != self.mtime:
                self.mtime, self.count = mtime, 0
                try:
                    with open(self.path) as f:
                        self.spec = json.load(f)
                except (OSError, ValueError):
                    self.spec = {}
            spec = self.spec
            if spec.get("op") != op:
                return None
            if spec.get("path") and fd_or_path is not None:
                where = fd_or_path if isinstance(fd_or_path, str) else _fd_path(fd_or_path)
                if spec["path"] not in where:
                    return None
            self.count += 1
            nth = int(spec.get("nth", 1))
            if self.count == nth or (spec.get("sticky") and self.count >= nth):
                return spec
            return None


def _fd_path(fd: int) -> str:
    try:
        return _real.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _raise(spec: dict[str, Any], what: str) -> None:
    code = getattr(errno_mod, spec.get("errno", "EIO"))
    raise OSError(code, f"{os.strerror(code)} (injected by the fault test into {what})")


CONTROL = _Control(os.environ.get("BOXBOX_TEST_FAULT_CONTROL"))


class OsProxy:
    """`os` for the raidfile modules, with the hooked calls able to fail."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_real, name)

    @staticmethod
    def writev(fd: int, buffers: Any) -> int:
        spec = CONTROL.fault("writev", fd)
        if spec:
            if spec.get("short"):
                first = memoryview(buffers[0])
                return _real.write(fd, first[:max(1, len(first) // 2)])
            _raise(spec, "writev")
        return _real.writev(fd, buffers)

    @staticmethod
    def write(fd: int, data: Any) -> int:
        spec = CONTROL.fault("writev", fd)
        if spec:
            if spec.get("short"):
                mv = memoryview(data)
                return _real.write(fd, mv[:max(1, len(mv) // 2)])
            _raise(spec, "write")
        return _real.write(fd, data)

    @staticmethod
    def fsync(fd: int) -> None:
        spec = CONTROL.fault("fsync", fd)
        if spec:
            _raise(spec, "fsync")
        _real.fsync(fd)

    @staticmethod
    def replace(src: Any, dst: Any, **kw: Any) -> None:
        spec = CONTROL.fault("replace", os.fsdecode(dst))
        if spec:
            _raise(spec, "rename")
        _real.replace(src, dst, **kw)

    @staticmethod
    def pread(fd: int, n: int, offset: int) -> bytes:
        spec = CONTROL.fault("pread", fd)
        if spec:
            _raise(spec, "pread")
        return _real.pread(fd, n, offset)

    @staticmethod
    def preadv(fd: int, buffers: Any, offset: int) -> int:
        spec = CONTROL.fault("pread", fd)
        if spec:
            _raise(spec, "preadv")
        return _real.preadv(fd, buffers, offset)


def install() -> None:
    import boxbox.raidfile.discset
    import boxbox.raidfile.reader
    import boxbox.raidfile.writer
    proxy = OsProxy()
    for module in (boxbox.raidfile.writer, boxbox.raidfile.reader, boxbox.raidfile.discset):
        module.os = proxy  # type: ignore[attr-defined]


if __name__ == "__main__":
    install()
    from boxbox.__main__ import main
    sys.exit(main(sys.argv[1:]))
