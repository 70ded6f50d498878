"""A small TCP proxy for network faults between a client and the server (127.0.0.1 only).

It forwards bytes both ways and can cut every connection after a number of bytes, stall
for a while after a number of bytes, or delay each chunk. Settings change between
connections; `bytes` counts what it forwarded since the last `reset`.
"""

from __future__ import annotations

import socket
import threading
import time


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.cut_after: int | None = None  # close both sides once this many bytes went through (both ways)
        self.stall_after: int | None = None  # stop forwarding for `stall_seconds` once, after this many
        self.stall_seconds = 0.0
        self.delay = 0.0  # seconds before each forwarded chunk
        self.bytes = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._stalled = False
        self._closing = False
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def reset(self, *, cut_after: int | None = None, stall_after: int | None = None, stall_seconds: float = 0.0,
              delay: float = 0.0) -> None:
        with self._lock:
            self.cut_after, self.stall_after, self.stall_seconds, self.delay = cut_after, stall_after, stall_seconds, delay
            self.bytes, self._stalled = 0, False

    def _accept(self) -> None:
        while not self._closing:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                down.close()
                continue
            up.settimeout(None)
            self._socks += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.delay:
                    time.sleep(self.delay)
                with self._lock:
                    before = self.bytes
                    self.bytes += len(data)
                    cut = self.cut_after is not None and self.bytes > self.cut_after
                    stall = (self.stall_after is not None and not self._stalled and self.bytes > self.stall_after)
                    if stall:
                        self._stalled = True
                if cut:
                    keep = max(0, self.cut_after - before)  # type: ignore[operator]
                    if keep:
                        dst.sendall(data[:keep])
                    self.cuts += 1
                    break
                if stall:
                    time.sleep(self.stall_seconds)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._closing = True
        self.listener.close()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass
