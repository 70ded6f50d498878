"""The fetcher behind `S3Client.fetch_ahead`: many GETs from one thread, the right bytes for each, a bounded
number of connections, and every fault failing only its own fetch, unretried, for the caller to read again."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from boxbox.errors import NotFound, StorageError
from boxbox.s3 import fetcher
from boxbox.s3.client import FETCH_CONNECTIONS, S3Client, S3Settings
from boxbox.s3.fetcher import Fetcher
from tests.s3.proxy import FaultProxy

FAULTS = ["500", "503", "reset", "reset_mid_body", "truncate", "truncate_chunked"]


@pytest.fixture
def client(seaweed, proxy: FaultProxy) -> Iterator[S3Client]:  # noqa: ANN001
    """A client through the fault proxy (1 s timeout), on a fresh bucket holding o/0 .. o/39."""
    proxy.clear()
    settings = seaweed.new_bucket()
    via = S3Settings(**{**settings.__dict__, "endpoint": proxy.endpoint, "timeout": 1.0, "backoff": 0.01})
    with S3Client(via) as c:
        for i in range(40):
            c.put_object(f"o/{i}", _data(i))
        proxy.clear()
        yield c
    proxy.clear()


def _data(i: int) -> bytes:
    return bytes([i]) * (100 + 997 * i)


def test_many_fetches_get_their_own_bytes_over_few_connections(client: S3Client, proxy: FaultProxy) -> None:
    before = client.requests
    futures = [client.fetch_ahead(f"o/{i}", 0, 1 << 20) for i in range(40)]
    assert [f.result(10) for f in futures] == [_data(i) for i in range(40)]
    assert client.fetch_ahead("o/7", 5, 12).result(10) == _data(7)[5:12]
    assert client.fetch_ahead("o/7", len(_data(7)), len(_data(7)) + 10).result(10) == b""  # 416: past the end
    with pytest.raises(NotFound, match="o/missing"):
        client.fetch_ahead("o/missing", 0, 100).result(10)
    assert client.requests - before == len(proxy.log) == 43  # one request each, counted like any other
    # kept alive and reused, never more than the limit (+ the client's own connection of the uploads)
    assert len(proxy._sockets) <= FETCH_CONNECTIONS + 1


@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_fails_that_fetch_alone_and_is_not_retried(client: S3Client, proxy: FaultProxy, fault: str) -> None:
    proxy.add(fault, method="GET", path="o/3")
    with pytest.raises(StorageError) as failed:
        client.fetch_ahead("o/3", 0, 1 << 20).result(10)
    assert not isinstance(failed.value, NotFound)
    assert "s3://" in str(failed.value) and "o/3" in str(failed.value)
    assert proxy.faults() == [fault] and len(proxy.log) == 1  # not retried: the caller reads it again
    futures = [client.fetch_ahead(f"o/{i}", 0, 1 << 20) for i in range(10)]  # the broken connection is gone
    assert [f.result(10) for f in futures] == [_data(i) for i in range(10)]
    assert client.get_object("o/3", 0, 1 << 20) == _data(3)  # the caller's read again, with its retries


def test_a_slow_answer_times_out_and_later_fetches_go_on(client: S3Client, proxy: FaultProxy) -> None:
    proxy.add("delay", method="GET", path="o/5", delay=2.5)  # the client's timeout is 1 s
    started = time.monotonic()
    slow = client.fetch_ahead("o/5", 0, 1 << 20)
    assert client.fetch_ahead("o/6", 0, 1 << 20).result(10) == _data(6)  # not held up by the slow one
    with pytest.raises(StorageError, match="timed out"):
        slow.result(10)
    assert 1.0 <= time.monotonic() - started < 2.5


def test_an_idle_connection_the_server_closed_is_replaced(client: S3Client, proxy: FaultProxy) -> None:
    assert client.fetch_ahead("o/1", 0, 1 << 20).result(10) == _data(1)
    proxy.drop_connections()
    time.sleep(0.2)
    assert [client.fetch_ahead(f"o/{i}", 0, 1 << 20).result(10) for i in range(3)] == [_data(i) for i in range(3)]


def test_the_thread_ends_when_idle_and_starts_again(client: S3Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetcher, "IDLE_EXIT", 0.2)
    f = Fetcher(client, 2)
    try:
        assert f.get("o/2", 0, 1 << 20).result(10) == _data(2)
        deadline = time.monotonic() + 5
        while f._thread is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f._thread is None
        assert f.get("o/4", 0, 1 << 20).result(10) == _data(4)
    finally:
        f.close()


def test_a_fetch_asked_for_as_the_idle_thread_ends_is_served(client: S3Client,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A `get` while the idle thread is closing its connections starts the next thread; the ending one must
    not cancel it (it did: the restore then read that key again in the foreground, or an index read failed)."""
    monkeypatch.setattr(fetcher, "IDLE_EXIT", 0.2)
    f = Fetcher(client, 2)
    late: list[Future[bytes]] = []

    class Sock:  # the idle connection's socket: closing it is the moment a new fetch arrives
        def __init__(self, sock: socket.socket) -> None:
            self._sock = sock

        def __getattr__(self, name: str) -> object:
            return getattr(self._sock, name)

        def close(self) -> None:
            if not late:
                late.append(f.get("o/4", 0, 1 << 20))
            self._sock.close()

    real_open = Fetcher._open

    def opening(self: Fetcher, address: object) -> object:
        conn, address = real_open(self, address)  # type: ignore[arg-type]
        conn.sock = Sock(conn.sock)  # type: ignore[assignment]
        return conn, address

    monkeypatch.setattr(Fetcher, "_open", opening)
    try:
        assert f.get("o/2", 0, 1 << 20).result(10) == _data(2)
        deadline = time.monotonic() + 5
        while not late and time.monotonic() < deadline:
            time.sleep(0.05)
        assert late[0].result(10) == _data(4)
    finally:
        f.close()


def test_close_fails_what_runs_and_cancels_what_waits(client: S3Client, proxy: FaultProxy) -> None:
    proxy.add("delay", method="GET", path="o/8", delay=0.5)
    f = Fetcher(client, 1)
    running = f.get("o/8", 0, 1 << 20)
    waiting = [f.get(f"o/{i}", 0, 1 << 20) for i in range(3)]
    time.sleep(0.2)
    f.close()
    with pytest.raises(StorageError, match="stopped"):
        running.result(10)
    assert all(w.cancelled() for w in waiting)
    with pytest.raises(StorageError, match="closed"):
        f.get("o/1", 0, 10)
    assert f._thread is None or not f._thread.is_alive()


def test_a_receive_woken_for_nothing_waits_to_be_readable(client: S3Client) -> None:
    import selectors
    import socket
    from concurrent.futures import Future

    a, b = socket.socketpair()
    a.setblocking(False)
    sel = selectors.DefaultSelector()
    f = Fetcher(client, 1)
    try:
        conn = fetcher._Conn(a)
        conn.state, conn.future = fetcher.RECEIVE, Future()
        f._step(sel, conn)  # nothing to read: BlockingIOError
        assert conn.events == selectors.EVENT_READ  # (writable would wake the loop at once, again and again)
        assert not conn.future.done()
    finally:
        f.close()
        sel.close()
        a.close()
        b.close()
