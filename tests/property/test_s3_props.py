"""Properties of the S3 client's pure parts: SigV4 encoding and signing, multipart
splitting, and the seekable reader, each against a plain model."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import io
import os
import string
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from urllib.parse import unquote

from hypothesis import example, given
from hypothesis import strategies as st

from boxbox.s3 import sigv4
from boxbox.s3.multipart import S3Writer
from boxbox.s3.reader import S3Reader

UNRESERVED = set(string.ascii_letters + string.digits + "-_.~")
NOW = datetime.datetime(2024, 2, 29, 23, 59, 59, tzinfo=datetime.timezone.utc)
keys = st.text(min_size=1, max_size=60)


def _only_unreserved_or_escapes(encoded: str, allowed: set[str]) -> bool:
    i = 0
    while i < len(encoded):
        if encoded[i] == "%":
            hexpart = encoded[i + 1:i + 3]
            if len(hexpart) != 2 or hexpart != hexpart.upper() or not all(c in string.hexdigits for c in hexpart):
                return False
            i += 3
        elif encoded[i] in allowed:
            i += 1
        else:
            return False
    return True


@given(keys)
@example("test$file.text")
@example("a/b//c/")
@example("%2F")
def test_uri_encoding_round_trips_and_uses_only_safe_characters(key: str) -> None:
    path = sigv4.uri_encode(key, keep_slash=True)
    query = sigv4.uri_encode(key)
    assert unquote(path) == key and unquote(query) == key
    assert _only_unreserved_or_escapes(path, UNRESERVED | {"/"})
    assert _only_unreserved_or_escapes(query, UNRESERVED)
    assert path.count("/") == key.count("/")


@given(st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=6, unique_by=lambda kv: kv[0]),
       st.randoms())
def test_canonical_query_ignores_order(pairs: list[tuple[str, str]], rnd) -> None:  # noqa: ANN001
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    assert sigv4.canonical_query(pairs) == sigv4.canonical_query(shuffled) == sigv4.canonical_query(dict(pairs))


def _server_check(method: str, target: str, headers: dict[str, str], secret: str) -> bool:
    """What a server does with the request as sent: decode the target, re-canonicalise, re-sign."""
    wire_path = target.split("?", 1)[0]
    canonical_path = sigv4.canonical_uri(unquote(wire_path))
    auth = headers["Authorization"]
    signed_names = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    signature = auth.rsplit("Signature=", 1)[1]
    lower = {k.lower(): v for k, v in headers.items()}
    canonical, _ = sigv4.canonical_request(method, canonical_path, "", {n: lower[n] for n in signed_names},
                                           lower["x-amz-content-sha256"])
    key = sigv4.signing_key(secret, lower["x-amz-date"][:8], "us-east-1")
    expected = hmac.new(key, sigv4.string_to_sign(lower["x-amz-date"], "us-east-1", canonical).encode(),
                        hashlib.sha256).hexdigest()
    return canonical_path == wire_path and hmac.compare_digest(expected, signature)


@given(keys, st.binary(max_size=200), st.text(min_size=1, max_size=40))
@example("a b+c/€", b"", "s")
def test_any_key_and_body_are_signed_as_sent(key: str, body: bytes, secret: str) -> None:
    path = "/bucket/" + key
    payload_hash = hashlib.sha256(body).hexdigest()
    headers = sigv4.sign("PUT", path, {}, {"host": "127.0.0.1:8333"}, payload_hash, access_key="AK",
                         secret_key=secret, region="us-east-1", now=NOW)
    target = sigv4.canonical_uri(path)
    assert _server_check("PUT", target, headers, secret)
    assert not _server_check("PUT", target, headers, secret + "x")
    other = sigv4.sign("PUT", path, {}, {"host": "127.0.0.1:8333"}, hashlib.sha256(body + b"!").hexdigest(),
                       access_key="AK", secret_key=secret, region="us-east-1", now=NOW)
    assert other["Authorization"] != headers["Authorization"]  # the body is bound to the signature


#: the fake's part threads: real ones, so parts of one writer really run at once
PART_POOL = ThreadPoolExecutor(4)


class FakeMultipartClient:
    """Records what S3Writer sends; parts must be full-size except the last."""

    def __init__(self, part_size: int) -> None:
        self.settings = SimpleNamespace(part_size=part_size)
        self.put: bytes | None = None
        self.parts: dict[int, bytes] = {}
        self.etags: list[str] = []
        self.completed = self.aborted = False

    def part_threads(self) -> ThreadPoolExecutor:
        return PART_POOL

    def put_object(self, key: str, data: bytes, **kw: object) -> str:
        self.put = bytes(data)
        return hashlib.md5(self.put).hexdigest()

    def create_upload(self, key: str) -> str:
        return "upload-1"

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        assert number not in self.parts
        self.parts[number] = bytes(data)
        return hashlib.md5(data).hexdigest()

    def complete_upload(self, key: str, upload_id: str, etags: list[str], **kw: object) -> str:
        self.completed = True
        self.etags = etags
        return f"{len(etags)}-parts"

    def abort_upload(self, key: str, upload_id: str) -> None:
        self.aborted = True


@given(st.integers(1, 50), st.lists(st.integers(0, 120), max_size=12), st.randoms())
@example(10, [10], None)
@example(10, [10, 0], None)
@example(10, [5, 5, 1], None)
def test_multipart_splitting_preserves_bytes(part_size: int, sizes: list[int], rnd) -> None:  # noqa: ANN001
    data = os.urandom(sum(sizes))
    fake = FakeMultipartClient(part_size)
    w = S3Writer(fake, "k")  # type: ignore[arg-type]
    offset = 0
    for n in sizes:
        assert w.write(memoryview(data)[offset:offset + n] if n % 2 else data[offset:offset + n]) == n
        offset += n
        assert len(w._buffer) <= part_size  # memory bounded by one part
    w.commit()
    if len(data) <= part_size:
        assert fake.put == data and not fake.parts
    else:
        parts = [fake.parts[n] for n in range(1, len(fake.parts) + 1)]  # numbered 1..N, whatever order they ran in
        assert fake.put is None and fake.completed and not fake.aborted
        assert b"".join(parts) == data and fake.etags == [hashlib.md5(p).hexdigest() for p in parts]
        assert all(len(p) == part_size for p in parts[:-1]) and 0 < len(parts[-1]) <= part_size


class FakeRangeClient:
    def __init__(self, data: bytes, read_ahead: int) -> None:
        self.data = data
        self.settings = SimpleNamespace(read_ahead=read_ahead, bucket="b")
        self.gets = 0

    def get_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        self.gets += 1
        return self.data[start:end]


ops = st.lists(st.one_of(st.tuples(st.just("read"), st.integers(-1, 300)),
                         st.tuples(st.just("seek"), st.integers(-50, 600), st.sampled_from([0, 1, 2]))),
               max_size=25)


@given(st.binary(max_size=500), st.integers(1, 128), ops)
def test_reader_behaves_like_bytesio(data: bytes, read_ahead: int, steps: list[tuple]) -> None:  # noqa: ANN001
    model = io.BytesIO(data)
    fake = FakeRangeClient(data, read_ahead)
    reader = S3Reader(fake, "k", SimpleNamespace(size=len(data), etag="e"))  # type: ignore[arg-type]
    for step in steps:
        if step[0] == "read":
            assert reader.read(step[1]) == model.read(step[1])
        else:
            _, offset, whence = step
            target = {0: 0, 1: model.tell(), 2: len(data)}[whence] + offset
            if target < 0:
                continue
            assert reader.seek(offset, whence) == model.seek(offset, whence)
        assert reader.tell() == model.tell()
