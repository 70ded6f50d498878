"""A helper process that computes parity and decodes rows on a second core, fed through shared memory.

Why: the XOR (`int.from_bytes`/`to_bytes`) and `zlib.crc32` of 4 KiB blocks hold the GIL, so
in one process a big write or degraded read is CPU-bound on one core whatever the threads do.
A helper process runs `boxbox.raidfile.kernels` (its whole program, started from that file's
source with `python -I -S -c`, so no import path is needed) on a shared buffer: a writer copies
each 2 MiB chunk into it and goes on writing the data stripes while the helper XORs, CRCs and
writes the parity stripe itself; a degraded sequential reader has the helper decode every
other chunk, rebuilding the missing stripe.
Design and measurements: docs/RAIDFILE.md "Speed".

Only big files use it (MIN_BYTES; the many small objects of a store never pay for the copy).
A helper serves one writer or reader at a time (`acquire`/`release`); up to MAX_HELPERS of
them per process, started lazily and reused. The shared buffer is a memfd (no resource
tracker, nothing in /dev/shm to leak); the helper exits when its socket reaches EOF, so a
killed parent leaves no helper behind, and `atexit` stops them at a normal exit. Whenever a
helper cannot start or dies, callers do the work in their own process, with the same bytes
(the helper runs the very functions the caller would); a helper that dies mid-write has its
unfinished commands redone from the shared buffer, which the caller still maps.
"""

from __future__ import annotations

import atexit
import collections
import inspect
import logging
import mmap
import os
import select
import socket
import subprocess
import sys
import threading

from boxbox.raidfile import kernels
from boxbox.raidfile.kernels import CMD, ERRNO, OK, OP_CLOSE, OP_OPEN, OP_PARITY, REPLY

log = logging.getLogger(__name__)

MIN_BYTES = 4 << 20  # a write or read uses a helper once this much of its file is behind it; tests set 0
SLOT_BYTES = 2 << 20  # one chunk of clear data (reader.CHUNK_BYTES); the buffer holds SLOTS of them
SLOTS = 2  # double buffering: the helper works on one chunk while the caller fills the other
# one per spare core (none on one core: the helper would only take turns with us); tests set 1
MAX_HELPERS = min(4, len(os.sched_getaffinity(0)) - 1 if hasattr(os, "sched_getaffinity") else 0)
AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "memfd_create") and bool(sys.executable)
MAX_DEATHS = 3  # helpers that died before we stop starting new ones

_lock = threading.Lock()
_idle: list[Helper] = []
_running: list[Helper] = []
_deaths = 0
_disabled = not AVAILABLE


class Helper:
    """One helper process, its shared buffer and its command socket; used by one caller at a time."""

    def __init__(self) -> None:
        size = SLOTS * SLOT_BYTES
        code = inspect.getsource(kernels)
        self.shm_fd = os.memfd_create("boxbox-raidfile", os.MFD_CLOEXEC)
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            os.ftruncate(self.shm_fd, size)
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", f"{code}\nserve({child.fileno()}, {self.shm_fd}, {size})\n"],
                stdin=subprocess.DEVNULL, pass_fds=(child.fileno(), self.shm_fd), close_fds=True)
        except BaseException:
            self.sock.close()
            os.close(self.shm_fd)
            raise
        finally:
            child.close()  # the helper's end: only the helper holds it now, so its death is our EOF
        self.shm = mmap.mmap(self.shm_fd, size)
        self.view = memoryview(self.shm)
        self.pending: collections.deque[tuple[int, tuple[int, ...]]] = collections.deque()  # (op, args) unanswered
        self.slot = 0

    def send(self, op: int, *args: int, fds: tuple[int, ...] = ()) -> None:
        """Queue one command; EOFError if the helper is gone."""
        msg = CMD.pack(op, *args, *(0,) * (9 - len(args)))
        try:
            socket.send_fds(self.sock, [msg], list(fds)) if fds else self.sock.send(msg)
        except OSError as e:
            raise EOFError(f"raidfile helper: {e}") from e
        self.pending.append((op, args))

    def reply(self, wait: float | None = None) -> int | None:
        """The oldest command's answer: its status, or None if not in within `wait` seconds (None: no limit);
        OSError with the helper's errno; EOFError if the helper is gone."""
        if wait is not None and not select.select([self.sock], [], [], wait)[0]:
            return None
        try:
            msg = self.sock.recv(REPLY.size)
        except BlockingIOError:
            return None
        except OSError as e:
            raise EOFError(f"raidfile helper: {e}") from e
        if len(msg) != REPLY.size:
            raise EOFError("raidfile helper: exited")
        self.pending.popleft()
        status, value = REPLY.unpack(msg)
        if status == ERRNO:
            raise OSError(value, os.strerror(value))
        return status

    def call(self, op: int, *args: int, fds: tuple[int, ...] = ()) -> int:
        self.send(op, *args, fds=fds)
        return self.drain()

    def open(self, key: int, fd: int, writable: bool) -> None:
        """Let the helper use `fd` as `key` in later commands (a writable stripe temp through its own open
        file, so the caller's flock is never the helper's to hold)."""
        self.call(OP_OPEN, key, int(writable), fds=(fd,))

    def drain(self) -> int:
        """Wait for every answer; the last status (the first error is raised after all are in)."""
        status: int | None = OK
        err = None
        while self.pending:
            try:
                status = self.reply()
            except OSError as e:
                err = err or e
        if err is not None:
            raise err
        return status or OK

    def free_slot(self) -> int | None:
        """Offset of a chunk-sized slot of the shared buffer the helper is done with; None if it is still busy
        with all of them (answers already in are collected, none waited for)."""
        while len(self.pending) >= SLOTS:
            if self.reply(wait=0) is None:
                return None
        o = self.slot * SLOT_BYTES
        self.slot = (self.slot + 1) % SLOTS
        return o

    def redo_parity(self, fd: int) -> None:
        """Write the parity of every unanswered OP_PARITY here, from the shared buffer (the helper died)."""
        for op, a in self.pending:
            if op == OP_PARITY:
                kernels.write_parity(fd, self.view[a[1] : a[1] + a[2]], a[3], a[4], a[5], a[6])
        self.pending.clear()

    def stop(self) -> None:
        """End the process (EOF on its socket, then a kill if it lingers) and free the buffer."""
        self.sock.close()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.view.release()
        try:
            self.shm.close()
        except BufferError:
            pass  # a reader's last chunk still points into it: unmapped when that goes
        os.close(self.shm_fd)


class ParityWriter:
    """A helper writing the parity stripe of one write: the caller hands over each chunk and goes on with the
    data stripes. Whatever the helper cannot do (busy with the chunks before, or dead) is done in the caller,
    by the same function, so the bytes are the same; a dead helper's unanswered chunks are redone from the
    shared buffer. The helper's errors (EIO, ENOSPC) come back as the OSError the caller's own write raises."""

    def __init__(self, h: Helper, fd: int, label: str) -> None:
        self.h: Helper | None = h
        self.fd = fd
        self.label = label

    @classmethod
    def start(cls, fd: int, label: str) -> ParityWriter | None:
        """A helper that writes parity to the stripe temp `fd`, or None: compute it in this process."""
        h = acquire()
        if h is None:
            return None
        try:
            h.open(0, fd, writable=True)
        except (OSError, EOFError):
            discard(h)
            return None
        return cls(h, fd, label)

    def write(self, c: memoryview, B: int, seed: int, offset: int, advise: int) -> None:
        """`kernels.write_parity(fd, c, ...)`, in the helper if it has a free slot, else here."""
        h = self.h
        try:
            slot = h.free_slot() if h is not None else None
            if h is not None and slot is not None:
                h.view[slot : slot + len(c)] = c
                h.send(OP_PARITY, 0, slot, len(c), B, seed, offset, advise)
                return
        except EOFError:
            self._lost()
        kernels.write_parity(self.fd, c, B, seed, offset, advise)

    def _lost(self) -> None:
        h, self.h = self.h, None
        if h is not None:
            log.warning("%s: the raidfile helper process died; parity is computed here", self.label)
            try:
                h.redo_parity(self.fd)
            finally:
                discard(h)

    def finish(self) -> None:
        """Wait until all parity handed over is written (raising the helper's error), then let the helper go."""
        h, self.h = self.h, None
        if h is None:
            return
        try:
            h.drain()
        except EOFError:
            self.h = h
            self._lost()
            return
        except BaseException:
            release(h)
            raise
        release(h)

    def drop(self) -> None:
        """Let the helper go, whatever it still had to do (the write is being aborted)."""
        h, self.h = self.h, None
        if h is not None:
            release(h)


def acquire() -> Helper | None:
    """An idle helper for one file (started if need be), or None: do the work in this process."""
    global _disabled
    with _lock:
        if _idle:
            return _idle.pop()
        if _disabled or len(_running) >= MAX_HELPERS:
            return None
        try:
            h = Helper()
        except (OSError, subprocess.SubprocessError) as e:
            _disabled = True
            log.warning("raidfile: no helper process (%s); parity is computed in this process", e)
            return None
        _running.append(h)
        return h


def release(h: Helper) -> None:
    """Give back a helper whose caller is done: it closes its files and waits for the next caller."""
    try:
        h.drain()
        h.call(OP_CLOSE)
    except (OSError, EOFError):
        discard(h)
        return
    with _lock:
        _idle.append(h)


def discard(h: Helper) -> None:
    """Stop a helper that failed (died, or left in an unknown state); after MAX_DEATHS none are started."""
    global _deaths, _disabled
    with _lock:
        if h in _running:
            _running.remove(h)
        _deaths += 1
        if _deaths >= MAX_DEATHS and not _disabled:
            _disabled = True
            log.warning("raidfile: helper processes keep failing; parity is computed in this process from now on")
    h.stop()


@atexit.register
def stop_all() -> None:
    """Stop every helper of this process (also run at exit)."""
    with _lock:
        helpers = list(_running)
        _running.clear()
        _idle.clear()
    for h in helpers:
        h.stop()


def _forget_after_fork() -> None:
    """A forked child must not talk to its parent's helpers, nor keep them alive by holding their sockets."""
    global _idle, _running
    for h in _running:
        h.sock.close()
    _idle, _running = [], []


os.register_at_fork(after_in_child=_forget_after_fork)
