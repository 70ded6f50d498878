"""Account leases on SeaweedFS: the conditional requests they rely on, taking over a dead
holder's lease, renewal, lost replies, and a holder that must stop writing."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from boxbox.errors import InUse, NotFound, PreconditionFailed, StorageError
from boxbox.s3.client import S3Client
from boxbox.store.lease import Lease, LeaseLocks, LeaseSettings, read_lease

SHORT = LeaseSettings(duration=1.5, skew=0.3)


@pytest.fixture()
def client(seaweed: Any) -> Any:
    c = S3Client(seaweed.new_bucket())
    yield c
    c.close()


def lease(client: S3Client, settings: LeaseSettings = SHORT, renew: bool = False, key: str = "leases/x.write") -> Lease:
    return Lease(lambda: client, key, "write", "account 0000002a", settings, renew=renew)


def test_the_conditional_requests_leases_rely_on(client: S3Client) -> None:
    """What SeaweedFS answers (checked by hand for 412 on the first two; the rest here)."""
    etag = client.put_object("k", b"one", if_none_match=True)  # If-None-Match on a missing key: created
    with pytest.raises(PreconditionFailed):
        client.put_object("k", b"two", if_none_match=True)  # ... on an existing key: 412
    with pytest.raises(PreconditionFailed):
        client.put_object("k", b"two", if_match="0" * 32)  # If-Match, wrong ETag: 412
    etag2 = client.put_object("k", b"two", if_match=etag)  # If-Match, right ETag: replaced
    assert client.get_object("k") == b"two" and etag2 != etag
    with pytest.raises(PreconditionFailed):
        client.put_object("k", b"three", if_match=etag)  # the old ETag no longer matches
    with pytest.raises((PreconditionFailed, NotFound)):
        client.put_object("missing", b"x", if_match=etag2)  # If-Match on a missing key: refused
    assert client.get_object("k") == b"two"


def test_racing_takeovers_of_one_etag_have_one_winner(client: S3Client) -> None:
    etag = client.put_object("race", b"dead holder")
    results: list[str] = []

    def take(i: int) -> None:
        try:
            client.put_object("race", f"taker {i}".encode(), if_match=etag)
            results.append(f"won {i}")
        except PreconditionFailed:
            results.append("lost")

    threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r.startswith("won")]
    assert len(winners) == 1 and len(results) == 6
    assert client.get_object("race").decode() == winners[0].replace("won", "taker")


def test_one_holder_at_a_time_and_release(client: S3Client) -> None:
    first = lease(client).acquire()
    with pytest.raises(InUse, match=r"account 0000002a is in use by another client \(lease held by "):
        lease(client).acquire()
    first.release()
    assert read_lease(client, "leases/x.write") is None
    lease(client).acquire().release()


def test_expired_lease_is_taken_over_and_the_old_holder_knows(client: S3Client) -> None:
    dead = lease(client).acquire()  # never renewed: its holder "died"
    with pytest.raises(InUse):
        lease(client).acquire()  # not before expiry + skew
    time.sleep(SHORT.duration + SHORT.skew + 0.2)
    with pytest.raises(StorageError, match="could not be renewed in time"):
        dead.check()  # the holder's own deadline passed first (duration - skew)
    taker = lease(client).acquire()
    assert read_lease(client, "leases/x.write").token == taker.token  # type: ignore[union-attr]
    with pytest.raises(StorageError, match="lease lost"):
        dead.renew()
    dead.release()  # past its deadline: leaves the taker's lease alone
    assert read_lease(client, "leases/x.write").token == taker.token  # type: ignore[union-attr]
    taker.check()
    taker.release()


def test_renewal_keeps_a_lease_past_its_duration(client: S3Client) -> None:
    held = lease(client, renew=True).acquire()
    try:
        time.sleep(2 * SHORT.duration)
        held.check()
        with pytest.raises(InUse):
            lease(client).acquire()
    finally:
        held.release()
    assert read_lease(client, "leases/x.write") is None


class LostReplies:
    """A client whose conditional PUTs land but whose replies are lost once: the retry gets 412."""

    def __init__(self, inner: S3Client) -> None:
        self.inner = inner
        self.lose = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put_object(self, key: str, data: bytes, **kw: Any) -> str:
        etag = self.inner.put_object(key, data, **kw)
        if self.lose and (kw.get("if_none_match") or kw.get("if_match")):
            self.lose -= 1
            raise PreconditionFailed(f"lost reply for {key}")
        return etag


def test_a_lost_reply_to_our_own_put_still_gives_us_the_lease(client: S3Client) -> None:
    flaky = LostReplies(client)
    mine = Lease(lambda: flaky, "leases/y.write", "write", "account 0000002b", SHORT, renew=False)  # type: ignore[arg-type, return-value]
    mine.acquire()
    assert read_lease(client, "leases/y.write").token == mine.token  # type: ignore[union-attr]
    flaky.lose = 1
    mine.renew()  # landed, reply lost: still ours, with the new ETag
    assert mine.etag == client.head_object("leases/y.write").etag
    mine.renew()
    mine.release()


class Unreachable(LostReplies):
    def put_object(self, key: str, data: bytes, **kw: Any) -> str:
        raise StorageError("S3 PUT: connection refused")


def test_a_holder_that_cannot_renew_stops_before_expiry(client: S3Client) -> None:
    broken = Unreachable(client)
    held = lease(client, renew=True).acquire()
    held._client = lambda: broken  # type: ignore[assignment,return-value]
    time.sleep(SHORT.duration - SHORT.skew + 0.2)
    with pytest.raises(StorageError, match="could not be renewed in time"):
        held.check()
    held.release()


def test_yield_requests(client: S3Client) -> None:
    locks = LeaseLocks(lambda: client, "", SHORT)
    assert not locks.yield_requested(0x2A, 30)
    locks.request_yield(0x2A)
    locks._yield_seen.clear()
    assert locks.yield_requested(0x2A, 30)
    locks.clear_yield(0x2A)
    locks._yield_seen.clear()
    assert not locks.yield_requested(0x2A, 30)
