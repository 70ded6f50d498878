"""Every S3Client operation against a real SeaweedFS (`weed server -s3`, SigV4 checked)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
from collections.abc import Iterator

import pytest

from boxbox.errors import (BoxboxError, ConfigError, NotFound, PermissionDenied, PreconditionFailed,
                           ProgrammingError, StorageError)
from boxbox.s3.client import MIN_PART_SIZE, ObjectInfo, S3Client, S3Settings, multipart_etag

PART = MIN_PART_SIZE


@pytest.fixture
def client(seaweed) -> Iterator[S3Client]:  # noqa: ANN001
    with S3Client(seaweed.new_bucket()) as c:
        yield c


def _raw(client: S3Client, method: str, key: str, headers: dict[str, str], body: bytes = b"", *,
         query: dict[str, str] | None = None, payload_hash: str | None = None) -> tuple[int, bytes]:
    """A request with headers the client would never send, to see what the store checks."""
    resp = client._transport.request(method, client._host, client._path(key), query, headers, body,
                                     payload_hash=payload_hash, what=key)
    return resp.status, resp.body


# ---- objects ----

def test_put_get_head_delete(client: S3Client) -> None:
    etag = client.put_object("a/one", b"hello")
    assert etag == hashlib.md5(b"hello").hexdigest()
    assert client.get_object("a/one") == b"hello"
    assert client.head_object("a/one") == ObjectInfo("a/one", 5, etag)
    client.delete_object("a/one")
    with pytest.raises(NotFound, match="NoSuchKey"):
        client.get_object("a/one")
    with pytest.raises(NotFound):
        client.head_object("a/one")
    client.delete_object("a/one")  # deleting a missing key is not an error


def test_empty_object_and_bytearray_and_memoryview(client: S3Client) -> None:
    client.put_object("empty", b"")
    assert client.get_object("empty") == b""
    assert client.head_object("empty").size == 0
    assert client.get_object("empty", 0, 10) == b""
    client.put_object("ba", bytearray(b"xyz"))
    client.put_object("mv", memoryview(b"0123456789")[2:5])
    assert client.get_object("ba") == b"xyz"
    assert client.get_object("mv") == b"234"


@pytest.mark.parametrize("key", ["sp ace/x", "plus+sign", "pct%41", "amp&lt<>", "unié€/ß", "ctl\x01x",
                                 "q?x=1#y", "a//double", "dollar$", "~tilde.-_"])
def test_awkward_keys_round_trip_and_list(client: S3Client, key: str) -> None:
    client.put_object(key, key.encode())
    assert client.get_object(key) == key.encode()
    assert [o.key for o in client.list_objects(key)] == [key]


def test_ranges(client: S3Client) -> None:
    data = bytes(range(256)) * 4
    client.put_object("r", data)
    assert client.get_object("r", 10, 20) == data[10:20]
    assert client.get_object("r", 1000) == data[1000:]
    assert client.get_object("r", 1000, 5000) == data[1000:]
    assert client.get_object("r", 5, 5) == b""
    assert client.get_object("r", 2000) == b""  # past the end: 416 -> nothing
    with pytest.raises(ProgrammingError, match="bad range"):
        client.get_object("r", 10, 5)
    with pytest.raises(ProgrammingError, match="key is empty"):
        client.get_object("")


def test_open_read_seek(seaweed) -> None:  # noqa: ANN001
    data = os.urandom(300_000)
    with S3Client(seaweed.new_bucket(read_ahead=64 * 1024)) as c:
        c.put_object("f", data)
        before = c.requests
        with c.open("f") as f:
            assert f.readable() and f.seekable()
            assert f.read(10) == data[:10]
            assert f.read(10) == data[10:20]
            assert c.requests - before == 2  # HEAD and one read-ahead GET for both reads
            assert f.seek(100_000) == 100_000
            assert f.read(5) == data[100_000:100_005]
            assert f.tell() == 100_005
            f.seek(-7, io.SEEK_END)
            assert f.read() == data[-7:]
            assert f.read(1) == b""
            f.seek(-100, io.SEEK_CUR)
            assert f.read(100) == data[-100:]
            f.seek(0)
            assert f.read() == data
            buf = bytearray(16)
            f.seek(50)
            assert f.readinto(buf) == 16 and bytes(buf) == data[50:66]
            with pytest.raises(ValueError):
                f.seek(-1)
        assert f.closed
        with pytest.raises(ValueError):
            f.read(1)
        with pytest.raises(NotFound):
            c.open("missing")


def test_open_fails_when_object_replaced_while_reading(client: S3Client) -> None:
    client.put_object("v", b"1" * 4_000_000)
    with client.open("v") as f:
        f.read(10)
        client.put_object("v", b"2" * 4_000_000)
        f.seek(3_000_000)
        with pytest.raises(PreconditionFailed):
            f.read(10)


def test_list_paging_and_prefix(client: S3Client) -> None:
    keys = [f"p/{i:04d}" for i in range(25)]
    for k in keys:
        client.put_object(k, k.encode())
    client.put_object("q/other", b"x")
    before = client.requests
    listed = list(client.list_objects("p/", page_size=7))
    assert [o.key for o in listed] == keys
    assert client.requests - before == 4  # 7+7+7+4
    assert listed[3] == ObjectInfo("p/0003", 6, hashlib.md5(b"p/0003").hexdigest())
    assert [o.key for o in client.list_objects("")] == [*keys, "q/other"]
    assert list(client.list_objects("nothing/")) == []


def test_create_bucket_twice_is_fine(seaweed) -> None:  # noqa: ANN001
    with S3Client(seaweed.new_bucket()) as c:
        c.create_bucket()
        c.put_object("x", b"1")
        c.create_bucket()
        assert c.get_object("x") == b"1"


# ---- multipart ----

def test_writer_small_object_is_one_put(client: S3Client) -> None:
    before = client.requests
    with client.writer("w/small") as w:
        assert w.write(b"abc") == 3
        w.write(memoryview(b"defg"))
    assert client.requests - before == 1
    assert client.get_object("w/small") == b"abcdefg"


def test_writer_exactly_one_part_is_one_put(client: S3Client) -> None:
    data = os.urandom(PART)
    w = client.writer("w/exact")
    w.write(data[:100])
    w.write(data[100:])
    before = client.requests
    etag = w.commit()
    assert client.requests - before == 1
    assert etag == hashlib.md5(data).hexdigest()
    assert client.get_object("w/exact") == data


def test_writer_multipart_preserves_bytes(client: S3Client) -> None:
    data = os.urandom(2 * PART + 12345)
    with client.writer("w/big") as w:
        for i in range(0, len(data), 777_777):
            w.write(data[i:i + 777_777])
    info = client.head_object("w/big")
    assert info.size == len(data)
    parts = [hashlib.md5(data[i:i + PART]).hexdigest() for i in range(0, len(data), PART)]
    assert info.etag == multipart_etag(parts) and info.etag.endswith("-3")
    assert client.get_object("w/big") == data  # a multipart ETag is not an MD5: not compared
    assert client.get_object("w/big", PART - 5, PART + 5) == data[PART - 5:PART + 5]
    assert client.abort_incomplete_uploads("w/") == 0


def test_writer_sends_parts_in_parallel_but_bounded(client: S3Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from boxbox.s3.multipart import PARTS_IN_FLIGHT

    real = client.upload_part
    lock = threading.Lock()
    running, most = [0], [0]
    release = threading.Event()

    def slow_part(key: str, upload_id: str, number: int, data: bytes) -> str:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(10)  # held until the writer has had to wait for room
        try:
            return real(key, upload_id, number, data)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(client, "upload_part", slow_part)
    data = os.urandom(4 * PART + 1)
    w = client.writer("w/parallel")
    threading.Timer(0.5, release.set).start()
    w.write(data)  # five parts: the third waits for room, so the writer never holds more than bounded
    w.commit()
    assert most[0] == PARTS_IN_FLIGHT
    assert client.get_object("w/parallel") == data
    assert client.abort_incomplete_uploads("w/") == 0


def test_a_failed_part_aborts_after_the_parts_in_flight(client: S3Client, monkeypatch: pytest.MonkeyPatch) -> None:
    real_part, real_abort = client.upload_part, client.abort_upload
    events: list[str] = []

    def part(key: str, upload_id: str, number: int, data: bytes) -> str:
        if number == 1:
            events.append("part 1 failed")
            raise StorageError("S3 PUT part 1: InternalError (after 6 attempts)")
        etag = real_part(key, upload_id, number, data)
        events.append(f"part {number} landed")
        return etag

    def abort(key: str, upload_id: str) -> None:
        events.append("aborted")
        real_abort(key, upload_id)

    monkeypatch.setattr(client, "upload_part", part)
    monkeypatch.setattr(client, "abort_upload", abort)
    w = client.writer("w/part-fails")
    with pytest.raises(StorageError, match="part 1: InternalError"):
        w.write(os.urandom(2 * PART + 1))
        w.commit()
    assert events[-1] == "aborted" and events.count("aborted") == 1  # nothing lands after the abort
    assert client.abort_incomplete_uploads("w/") == 0
    with pytest.raises(NotFound):
        client.head_object("w/part-fails")


def test_writer_exception_aborts_the_upload(client: S3Client) -> None:
    with pytest.raises(RuntimeError):
        with client.writer("w/failed") as w:
            w.write(os.urandom(PART + 1))
            raise RuntimeError("boom")
    assert client.abort_incomplete_uploads("w/") == 0
    with pytest.raises(NotFound):
        client.head_object("w/failed")
    with pytest.raises(BoxboxError):
        w.write(b"more")


def test_abort_incomplete_uploads(client: S3Client) -> None:
    for key in ("u/a", "u/b", "v/c", "u/sp ace+plus"):
        upload = client.create_upload(key)
        client.upload_part(key, upload, 1, b"part")
    assert client.abort_incomplete_uploads("u/") == 3
    assert client.abort_incomplete_uploads("u/") == 0
    assert client.abort_incomplete_uploads("") == 1


# ---- conditional writes ----

def test_put_if_none_match(client: S3Client) -> None:
    client.put_object("c/new", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed, match="c/new") as e:
        client.put_object("c/new", b"2", if_none_match=True)
    assert e.value.retried is False
    assert client.get_object("c/new") == b"1"


def test_put_if_match(client: S3Client) -> None:
    etag = client.put_object("c/m", b"1")
    with pytest.raises(PreconditionFailed):
        client.put_object("c/m", b"2", if_match="0" * 32)
    with pytest.raises(PreconditionFailed):
        client.put_object("c/absent", b"2", if_match=etag)
    etag2 = client.put_object("c/m", b"2", if_match=etag)
    assert client.get_object("c/m") == b"2"
    with pytest.raises(PreconditionFailed):
        client.put_object("c/m", b"3", if_match=etag)  # the old ETag no longer matches
    client.put_object("c/m", b"3", if_match=f'"{etag2}"')  # quoted is fine too


def test_multipart_complete_honours_conditions(client: S3Client) -> None:
    """SeaweedFS 4.48 checks If-None-Match and If-Match on CompleteMultipartUpload too."""
    data = os.urandom(PART + 10)
    etag = client.put_object("c/mp", b"old")
    for condition in ({"if_none_match": True}, {"if_match": "0" * 32}):
        w = client.writer("c/mp", **condition)
        w.write(data)
        with pytest.raises(PreconditionFailed, match="POST"):
            w.commit()
    assert client.get_object("c/mp") == b"old"
    assert client.abort_incomplete_uploads("c/") == 0  # the failed commits aborted
    w = client.writer("c/mp", if_match=etag)
    w.write(data)
    w.commit()
    assert client.get_object("c/mp") == data
    w = client.writer("c/mp2", if_none_match=True)
    w.write(data)
    w.commit()
    assert client.get_object("c/mp2") == data


# ---- integrity: what the store checks ----

def test_store_refuses_wrong_content_md5(client: S3Client) -> None:
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    status, body = _raw(client, "PUT", "i/md5", {"content-md5": wrong}, b"payload")
    assert (status, b"<Code>BadDigest</Code>" in body) == (400, True)
    with pytest.raises(NotFound):
        client.head_object("i/md5")
    upload = client.create_upload("i/part")
    status, body = _raw(client, "PUT", "i/part", {"content-md5": wrong}, b"payload",
                        query={"partNumber": "1", "uploadId": upload})
    assert (status, b"<Code>BadDigest</Code>" in body) == (400, True)
    client.abort_upload("i/part", upload)


def test_store_refuses_wrong_checksum_sha256(client: S3Client) -> None:
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    status, body = _raw(client, "PUT", "i/sha", {"x-amz-checksum-sha256": wrong}, b"payload")
    assert (status, b"<Code>BadDigest</Code>" in body) == (400, True)
    with pytest.raises(NotFound):
        client.head_object("i/sha")


def test_put_with_the_callers_sha256(client: S3Client) -> None:
    """put_object(sha256=) skips hashing the body again; a wrong one is refused like a damaged body."""
    assert client.put_object("i/given", b"payload", sha256=hashlib.sha256(b"payload").digest())
    assert client.get_object("i/given") == b"payload"
    with pytest.raises(StorageError, match="BadDigest"):
        client.put_object("i/wrong", b"payload", sha256=hashlib.sha256(b"other").digest())
    with pytest.raises(NotFound):
        client.head_object("i/wrong")


def test_store_does_not_check_the_signed_payload_hash(client: S3Client) -> None:
    """Documented in docs/S3.md: SeaweedFS 4.48 stores a body whose x-amz-content-sha256
    (correctly signed) does not match it, hence Content-MD5 and x-amz-checksum-sha256."""
    status, _ = _raw(client, "PUT", "i/hash", {}, b"payload", payload_hash=hashlib.sha256(b"other").hexdigest())
    assert status == 200
    assert client.get_object("i/hash") == b"payload"


# ---- errors ----

def test_wrong_secret_is_permission_denied_naming_the_bucket(seaweed) -> None:  # noqa: ANN001
    settings = seaweed.new_bucket()
    bad = S3Settings(**{**settings.__dict__, "secret_key": "not-the-secret-" + "x" * 20})
    with S3Client(bad) as c:
        with pytest.raises(PermissionDenied) as e:
            c.put_object("k", b"v")
    message = str(e.value)
    assert settings.bucket in message and "SignatureDoesNotMatch" in message and "/k" in message
    assert "\n" not in message
    assert bad.secret_key not in message and settings.secret_key not in message
    assert "Signature=" not in message and "AWS4-HMAC" not in message


def test_unknown_access_key_is_permission_denied(seaweed) -> None:  # noqa: ANN001
    settings = seaweed.new_bucket()
    with S3Client(S3Settings(**{**settings.__dict__, "access_key": "NOSUCHKEY"})) as c:
        with pytest.raises(PermissionDenied, match=settings.bucket):
            c.get_object("k")


def test_missing_bucket_is_not_found(seaweed) -> None:  # noqa: ANN001
    with S3Client(seaweed.settings("no-such-bucket-here")) as c:
        with pytest.raises(NotFound, match="no-such-bucket-here"):
            c.put_object("k", b"v")


def test_secret_never_logged(seaweed, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    caplog.set_level("DEBUG", logger="boxbox")
    settings = seaweed.new_bucket()
    with S3Client(settings) as c:
        c.put_object("k", b"v")
        c.get_object("k")
        with pytest.raises(NotFound):
            c.get_object("missing")
    text = caplog.text + repr(settings)
    assert "PUT" in caplog.text
    assert settings.secret_key not in text and "Signature=" not in text


@pytest.mark.parametrize("endpoint, match", [
    ("http://127.0.0.1:9", "plain http"),
    ("ftp://host", "expected https"),
    ("https://host/path", "only scheme, host and port"),
    ("https://host:notaport", "host:notaport"),
])
def test_bad_endpoints_are_config_errors(endpoint: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        S3Client(S3Settings(endpoint, "bucket"))


@pytest.mark.parametrize("changes, match", [
    ({"bucket": "Bad_Bucket"}, "bucket name"),
    ({"addressing": "dns"}, "addressing"),
    ({"part_size": 1024}, "part size"),
    ({"ca_file": "/nonexistent/ca.pem"}, "CA file"),
])
def test_bad_settings_are_config_errors(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        S3Client(S3Settings(**{"endpoint": "https://s3.example.net", "bucket": "bucket", **changes}))


def test_secret_not_in_repr() -> None:
    assert "hunter2" not in repr(S3Settings("https://s3.example.net", "bucket", secret_key="hunter2"))


def test_virtual_host_addressing_puts_the_bucket_in_the_host() -> None:
    c = S3Client(S3Settings("https://s3.example.net:8443", "bkt", addressing="virtual"))
    assert (c._host, c._path("a b")) == ("bkt.s3.example.net", "/a b")
    assert c._transport._host_header(c._host) == "bkt.s3.example.net:8443"
    p = S3Client(S3Settings("https://s3.example.net", "bkt"))
    assert (p._host, p._path("a b"), p._transport._host_header(p._host)) == ("s3.example.net", "/bkt/a b",
                                                                             "s3.example.net")


# ---- threads ----

def test_many_threads_share_one_client(client: S3Client) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(15):
                data = f"{n}-{i}".encode() * 100
                client.put_object(f"t/{n}/{i}", data)
                assert client.get_object(f"t/{n}/{i}") == data
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert client.requests >= 8 * 15 * 2
    assert len(list(client.list_objects("t/"))) == 8 * 15



def test_whole_body_checks() -> None:
    """The checks a whole GET applies: the MD5 ETag, then the stored SHA-256 checksum."""
    from boxbox.s3.client import whole_body_problem
    from boxbox.s3.transport import Response

    body = b"the object"
    md5 = f'"{hashlib.md5(body).hexdigest()}"'
    sha = base64.b64encode(hashlib.sha256(body).digest()).decode()
    bad_sha = base64.b64encode(hashlib.sha256(b"x").digest()).decode()

    def problem(headers: dict[str, str], data: bytes = body) -> str:
        return whole_body_problem(Response(200, "OK", headers, data, 1))

    assert problem({"etag": md5, "x-amz-checksum-sha256": sha}) == ""
    assert "ETag" in problem({"etag": md5}, b"the objecT")
    assert "x-amz-checksum-sha256" in problem({"etag": '"abc-2"', "x-amz-checksum-sha256": bad_sha})
    assert problem({"etag": '"abc-2"', "x-amz-checksum-sha256": "c29tZQ==-3"}) == ""  # composite: not checked
    assert problem({}) == ""


def test_delete_and_abort_in_a_missing_bucket_are_errors(seaweed) -> None:  # noqa: ANN001
    """A missing key or upload is fine to delete; a missing bucket is not hidden behind that."""
    with S3Client(seaweed.settings("no-such-bucket-here")) as c:
        with pytest.raises(NotFound, match="NoSuchBucket"):
            c.delete_object("k")
        with pytest.raises(NotFound, match="NoSuchBucket"):
            c.abort_upload("k", "no-such-upload")
    with S3Client(seaweed.new_bucket()) as c:
        c.abort_upload("k", "no-such-upload")
