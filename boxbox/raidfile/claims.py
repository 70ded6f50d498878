"""Who may change a raidfile: an exclusive flock on each of its temp names.

Every change (write, repair, delete, rename) first claims the temp name `NAME.rfw` in each
directory of the set: it opens (creating if need be) the file there and takes a
non-blocking `flock`. While the lock is held the temp is live; the kernel drops the lock
when its holder dies, even by SIGKILL, so an unlocked temp is stale and may be recovered
or removed by anyone (see `boxbox.raidfile.check.recover_stale`). A claim re-checks, after
locking, that the name still refers to the locked inode, because a cleaner may have
unlinked it between our open and our lock. A process that moves a committed stripe onto a
temp name locks that stripe's inode first, so the name never points at an unlocked inode
while the change is alive.
"""

from __future__ import annotations

import fcntl
import os
import time

from boxbox.errors import InUse

CLAIM_WAIT = 1.0  # seconds to wait for another change of the same raidfile to finish


def _same_inode(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def lock_fd(fd: int) -> bool:
    """Take the exclusive lock without waiting; False if someone alive holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def claim(path: str, what: str) -> int:
    """Open-or-create `path` and hold its lock; contents are left as found. InUse after CLAIM_WAIT."""
    deadline = time.monotonic() + CLAIM_WAIT
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if lock_fd(fd) and _same_inode(fd, path):
            return fd
        os.close(fd)  # held by a live change, or unlinked by a cleaner before we locked it
        if time.monotonic() > deadline:
            raise InUse(f"{what} is being changed by another process (lock on {path} held)")
        time.sleep(0.005)


def claim_all(paths: list[str], what: str) -> list[int]:
    """Claim every temp name of one raidfile, or none of them."""
    fds: list[int] = []
    try:
        for p in paths:
            fds.append(claim(p, what))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def lock_existing(path: str) -> tuple[int | None, bool]:
    """Lock a temp that is already there: (fd, False) if its holder is dead; (None, live) otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, False
    if not lock_fd(fd):
        os.close(fd)
        return None, True
    if _same_inode(fd, path):
        return fd, False
    os.close(fd)
    return None, False


def unlink_if_ours(fd: int, path: str) -> None:
    """Unlink `path` if it still names the inode open as `fd`."""
    if _same_inode(fd, path):
        os.unlink(path)


def release(fd: int, path: str | None) -> None:
    """Unlink `path` (when given and still ours) and drop the lock."""
    try:
        if path is not None:
            unlink_if_ours(fd, path)
    finally:
        os.close(fd)
