"""Faults between the client and SeaweedFS: each is retried or clearly reported, and no
fault ever leaves a corrupt object behind (every object is read back past the proxy)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator

import pytest

from boxbox.errors import IntegrityError, NotFound, PreconditionFailed, StorageError
from boxbox.s3.client import MIN_PART_SIZE, S3Client, S3Settings
from tests.s3.proxy import FaultProxy

RETRIED = ["500", "503", "reset", "reset_mid_body", "truncate", "truncate_chunked"]


@pytest.fixture
def bucket(seaweed, proxy: FaultProxy) -> Iterator[tuple[S3Client, S3Client]]:  # noqa: ANN001
    """(client through the proxy, direct client) on one fresh bucket."""
    proxy.clear()
    direct_settings = seaweed.new_bucket()
    via = S3Settings(**{**direct_settings.__dict__, "endpoint": proxy.endpoint, "timeout": 2.0, "retries": 3,
                        "backoff": 0.01})
    with S3Client(via) as c, S3Client(direct_settings) as d:
        yield c, d
    proxy.clear()


@pytest.mark.parametrize("fault", RETRIED)
def test_get_faults_are_retried(bucket: tuple[S3Client, S3Client], proxy: FaultProxy, fault: str) -> None:
    c, d = bucket
    data = os.urandom(100_000)
    d.put_object("g", data)
    proxy.add(fault, method="GET", times=2)
    before = c.requests
    assert c.get_object("g") == data
    assert c.requests - before == 3
    assert proxy.faults() == [fault, fault]


@pytest.mark.parametrize("fault", ["truncate", "reset_mid_body", "500"])
def test_ranged_reads_are_retried(bucket: tuple[S3Client, S3Client], proxy: FaultProxy, fault: str) -> None:
    c, d = bucket
    data = os.urandom(200_000)
    d.put_object("r", data)
    proxy.add(fault, method="GET")
    assert c.get_object("r", 1000, 150_000) == data[1000:150_000]
    with c.open("r") as f:
        proxy.add(fault, method="GET")
        f.seek(500)
        assert f.read(100_000) == data[500:100_500]


@pytest.mark.parametrize("fault, when", [(f, "before") for f in RETRIED[:3]] + [(f, "after") for f in RETRIED])
def test_put_faults_are_retried(bucket: tuple[S3Client, S3Client], proxy: FaultProxy, fault: str,
                                when: str) -> None:
    c, d = bucket
    data = os.urandom(50_000)
    proxy.add(fault, method="PUT", when=when)
    assert c.put_object("p", data) == hashlib.md5(data).hexdigest()
    assert d.get_object("p") == data
    assert proxy.faults() == [fault]


def test_delay_beyond_timeout_is_retried(bucket: tuple[S3Client, S3Client], proxy: FaultProxy) -> None:
    c, d = bucket
    d.put_object("slow", b"eventually")
    proxy.add("delay", method="GET", delay=3.0)  # the client's timeout is 2 s
    assert c.get_object("slow") == b"eventually"
    assert proxy.faults() == ["delay"]
    assert len(proxy.log) == 2


def test_persistent_faults_are_reported_not_hidden(bucket: tuple[S3Client, S3Client], proxy: FaultProxy) -> None:
    c, d = bucket
    proxy.add("503", times=100)
    with pytest.raises(StorageError, match=r"SlowDown.*after 4 attempts") as e:
        c.put_object("never", b"x")
    assert c.settings.bucket in str(e.value) and "/never" in str(e.value)
    proxy.clear()
    proxy.add("reset", times=100)
    with pytest.raises(StorageError, match=r"S3 GET .*/gone: .*gave up after [45] attempts"):
        c.get_object("gone")
    proxy.clear()
    proxy.add("truncate", times=100)
    d.put_object("cut", b"y" * 1000)
    with pytest.raises(StorageError, match="response cut short"):
        c.get_object("cut")
    proxy.clear()
    with pytest.raises(NotFound):
        d.head_object("never")


def test_client_errors_are_never_retried(bucket: tuple[S3Client, S3Client], proxy: FaultProxy) -> None:
    c, _ = bucket
    before = c.requests
    with pytest.raises(NotFound, match="NoSuchKey"):
        c.get_object("missing")
    assert c.requests - before == 1


def test_request_corrupted_in_flight_is_refused_by_the_store(bucket: tuple[S3Client, S3Client],
                                                             proxy: FaultProxy) -> None:
    c, d = bucket
    proxy.add("corrupt_request", method="PUT")
    with pytest.raises(StorageError, match="BadDigest"):
        c.put_object("bent", b"z" * 10_000)
    with pytest.raises(NotFound):
        d.head_object("bent")


def test_corrupt_whole_get_is_caught_by_the_etag(bucket: tuple[S3Client, S3Client], proxy: FaultProxy) -> None:
    c, d = bucket
    data = os.urandom(10_000)
    d.put_object("md5", data)
    proxy.add("corrupt", method="GET")
    assert c.get_object("md5") == data  # mismatch, then a clean second read
    proxy.add("corrupt", method="GET", times=2)
    with pytest.raises(IntegrityError, match="do not match ETag"):
        c.get_object("md5")


def test_stale_keep_alive_connections_are_replaced_silently(bucket: tuple[S3Client, S3Client],
                                                             proxy: FaultProxy) -> None:
    c, d = bucket
    d.put_object("k", b"v")
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(c.get_object("k"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    proxy.drop_connections()
    before = c.requests
    assert c.get_object("k") == b"v"
    assert results == [b"v"] * 4
    assert c.requests - before <= 2  # one stale connection at most, then a fresh one


def test_multipart_part_faults_are_retried(bucket: tuple[S3Client, S3Client], proxy: FaultProxy) -> None:
    c, d = bucket
    data = os.urandom(2 * MIN_PART_SIZE + 100)
    proxy.add("reset", method="PUT", path="partNumber=2", when="after")
    proxy.add("500", method="POST", path="uploadId=", when="before")
    with c.writer("mp") as w:
        w.write(data)
    assert sorted(proxy.faults()) == ["500", "reset"]
    assert d.get_object("mp") == data
    assert d.abort_incomplete_uploads("") == 0


def test_multipart_that_fails_is_aborted(bucket: tuple[S3Client, S3Client], proxy: FaultProxy) -> None:
    c, d = bucket
    proxy.add("503", method="PUT", path="partNumber=2", times=100)
    w = c.writer("mp-fail")
    with pytest.raises(StorageError, match="SlowDown"):  # parts are sent behind: raised by a later write or commit
        w.write(os.urandom(2 * MIN_PART_SIZE + 1))
        w.commit()
    assert d.abort_incomplete_uploads("") == 0  # the writer aborted its upload
    with pytest.raises(NotFound):
        d.head_object("mp-fail")


# ---- conditional writes whose answer was lost ----

@pytest.mark.parametrize("condition", ["if_none_match", "if_match"])
def test_lost_success_of_a_conditional_put_is_recognised(bucket: tuple[S3Client, S3Client], proxy: FaultProxy,
                                                          condition: str) -> None:
    """The PUT lands, its answer is lost, the retry gets 412: the object holds our bytes, so success."""
    c, d = bucket
    old = d.put_object("lease-" + condition, b"old") if condition == "if_match" else None
    kwargs = {"if_none_match": True} if condition == "if_none_match" else {"if_match": old}
    proxy.add("reset", method="PUT", when="after")
    assert c.put_object("lease-" + condition, b"mine", **kwargs) == hashlib.md5(b"mine").hexdigest()
    assert d.get_object("lease-" + condition) == b"mine"


@pytest.mark.parametrize("conditional", [False, True])
def test_lost_answer_to_multipart_complete_is_recognised(bucket: tuple[S3Client, S3Client], proxy: FaultProxy,
                                                         conditional: bool) -> None:
    """The retry finds the upload gone (404 NoSuchUpload) or the key taken (412); the ETag shows it is ours."""
    c, d = bucket
    data = os.urandom(MIN_PART_SIZE + 5)
    proxy.add("reset", method="POST", path="uploadId=", when="after")
    w = c.writer("mp-lost", if_none_match=conditional)
    w.write(data)
    assert w.commit() == d.head_object("mp-lost").etag
    assert proxy.faults() == ["reset"]
    assert d.get_object("mp-lost") == data


def test_lost_race_after_retry_says_a_retry_happened(bucket: tuple[S3Client, S3Client], proxy: FaultProxy) -> None:
    c, d = bucket
    proxy.add("500", method="PUT", action=lambda: d.put_object("lease", b"theirs"))
    with pytest.raises(PreconditionFailed, match="after 2 attempts") as e:
        c.put_object("lease", b"mine", if_none_match=True)
    assert e.value.retried is True
    assert d.get_object("lease") == b"theirs"


def test_connection_refused_is_retried_then_reported(seaweed) -> None:  # noqa: ANN001
    from tests.seaweed import free_ports

    settings = seaweed.settings("whatever", endpoint=f"http://127.0.0.1:{free_ports(1)[0]}", retries=2, backoff=0.01)
    with S3Client(settings) as c:
        with pytest.raises(StorageError, match=r"ConnectionRefusedError.*gave up after 3 attempts"):
            c.get_object("k")
        assert c.requests == 3


def test_old_idle_connections_are_not_reused(bucket: tuple[S3Client, S3Client], proxy: FaultProxy,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from boxbox.s3 import transport

    c, d = bucket
    d.put_object("k", b"v")
    assert c.get_object("k") == b"v"
    monkeypatch.setattr(transport, "MAX_IDLE", 0.0)
    proxy.drop_connections()  # would cost a failed send if the idle connection were reused
    before = c.requests
    assert c.get_object("k") == b"v"
    assert c.requests - before == 1
