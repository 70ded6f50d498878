"""What the two daemons (server, client) share: detaching from the terminal and the pid file."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from boxbox.atomic import write_atomic


def _daemonize() -> None:
    """Classic double fork: no controlling terminal, stdio on /dev/null."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


@contextmanager
def running(foreground: bool, pid_file: Path | None) -> Iterator[None]:
    """Detach unless `foreground`, then hold the pid file (written atomically) until the daemon ends."""
    if not foreground:
        _daemonize()
    if pid_file is not None:
        write_atomic(pid_file, f"{os.getpid()}\n".encode(), mode=0o644)
    try:
        yield
    finally:
        if pid_file is not None:
            try:
                pid_file.unlink()
            except FileNotFoundError:
                pass
