"""A small S3 client for the store's object-store backend: standard library only.

Covers what a backup store needs and nothing more: whole and ranged reads, single and
multipart writes with integrity checks, conditional writes for leases, listing, and
clean-up of abandoned uploads. Every S3 failure becomes a BoxboxError whose one line names
the bucket, the key and S3's error code; the secret key and signatures never appear in a
message or a log line. docs/S3.md says what is checked and what SeaweedFS honours.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple
from urllib.parse import unquote_plus
from xml.sax.saxutils import escape

from boxbox.errors import (BoxboxError, ConfigError, IntegrityError, NotFound, PermissionDenied,
                           PreconditionFailed, ProgrammingError, StorageError)
from boxbox.s3 import sigv4
from boxbox.s3.fetcher import Fetcher
from boxbox.s3.multipart import S3Writer
from boxbox.s3.reader import S3Reader
from boxbox.s3.transport import Response, Transport, parse_endpoint

log = logging.getLogger(__name__)

#: S3 (and SeaweedFS: EntityTooSmall) refuses parts below 5 MiB, except the last
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
#: threads sending multipart parts, shared by all the client's writers (each sends PARTS_IN_FLIGHT at once)
PART_THREADS = 8
#: connections of the fetcher (`fetch_ahead`): GETs in flight at once, all from one thread
FETCH_CONNECTIONS = 16
_NS = re.compile(r"^\{[^}]*\}")
_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-[0-9]+$")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach one bucket; roles build it from the config file."""

    endpoint: str
    bucket: str
    region: str = "us-east-1"
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    addressing: str = "path"
    ca_file: str | None = None
    allow_http: bool = False
    timeout: float = 30.0
    retries: int = 5
    part_size: int = 8 * 1024 * 1024
    #: first retry waits up to this long (full jitter), doubling each time up to 10 s
    backoff: float = 0.2
    #: bytes fetched per ranged GET when reading through `S3Client.open`
    read_ahead: int = 1024 * 1024


class ObjectInfo(NamedTuple):
    key: str
    size: int
    etag: str


def multipart_etag(part_etags: list[str]) -> str:
    """The ETag S3 gives a multipart object: MD5 of the parts' binary MD5s, a dash, the part count."""
    joined = b"".join(bytes.fromhex(e) for e in part_etags)
    return f"{hashlib.md5(joined).hexdigest()}-{len(part_etags)}"


def _error_in_body(resp: Response) -> bool:
    """S3 may answer CompleteMultipartUpload 200 and put an error (to be retried) in the body."""
    return resp.status == 200 and resp.body.lstrip()[:200].find(b"<Error>") >= 0


def whole_body_problem(resp: Response) -> str:
    """Why a whole object's body is not what the store holds ("" if no check fails)."""
    etag = _strip_etag(resp.headers.get("etag", ""))
    if _PLAIN_MD5.match(etag) and hashlib.md5(resp.body).hexdigest() != etag:
        return f"{len(resp.body)} bytes read do not match ETag {etag} (MD5)"
    checksum = resp.headers.get("x-amz-checksum-sha256", "")
    try:
        digest = base64.b64decode(checksum, validate=True)
    except ValueError:
        digest = b""  # a composite multipart checksum ("...-N") covers parts, not the object
    if len(digest) == 32 and hashlib.sha256(resp.body).digest() != digest:
        return f"{len(resp.body)} bytes read do not match x-amz-checksum-sha256 {checksum}"
    return ""


def _error_fields(resp: Response) -> tuple[str, str]:
    """(Code, Message) of an S3 error body; only these two, never the rest (it may echo the signature)."""
    if resp.body.lstrip().startswith(b"<"):
        try:
            root = ET.fromstring(resp.body)
            return _child(root, "Code"), _child(root, "Message")
        except ET.ParseError:
            pass
    return "", ""


def _strip_etag(etag: str) -> str:
    return etag.strip().removeprefix("W/").strip('"')


def _local(tag: str) -> str:
    return _NS.sub("", tag)


def _xml(body: bytes, what: str) -> ET.Element:
    try:
        return ET.fromstring(body)
    except ET.ParseError as e:
        raise StorageError(f"S3 {what}: unreadable XML response ({e})") from None


def _child(elem: ET.Element, name: str) -> str:
    for c in elem:
        if _local(c.tag) == name:
            return c.text or ""
    return ""


def _children(elem: ET.Element, name: str) -> Iterator[ET.Element]:
    return (c for c in elem if _local(c.tag) == name)


class S3Client:
    """One bucket on one endpoint; safe to share between threads."""

    def __init__(self, settings: S3Settings) -> None:
        endpoint = parse_endpoint(settings.endpoint, settings.allow_http)
        if settings.addressing not in ("path", "virtual"):
            raise ConfigError(f"S3 addressing {settings.addressing!r}: expected 'path' or 'virtual'")
        if not _BUCKET_NAME.match(settings.bucket):
            raise ConfigError(f"S3 bucket name {settings.bucket!r}: expected 3-63 of a-z 0-9 . -")
        if not MIN_PART_SIZE <= settings.part_size <= MAX_PART_SIZE:
            raise ConfigError(f"S3 part size {settings.part_size}: expected {MIN_PART_SIZE} to {MAX_PART_SIZE} "
                              "bytes (S3 refuses smaller parts with EntityTooSmall)")
        if settings.retries < 0 or settings.timeout <= 0:
            raise ConfigError("S3 settings: timeout must be positive and retries >= 0")
        self.settings = settings
        self._transport = Transport(endpoint, region=settings.region, access_key=settings.access_key,
                                    secret_key=settings.secret_key, timeout=settings.timeout,
                                    retries=settings.retries, backoff=settings.backoff,
                                    ca_file=settings.ca_file)
        if settings.addressing == "virtual":
            self._host, self._prefix = f"{settings.bucket}.{endpoint.host}", ""
        else:
            self._host, self._prefix = endpoint.host, "/" + settings.bucket
        self._parts: ThreadPoolExecutor | None = None
        self._parts_lock = threading.Lock()
        self._fetcher: Fetcher | None = None

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def host_name(self) -> str:
        """The host requests go to (`bucket.host` with virtual addressing)."""
        return self._host

    @property
    def requests(self) -> int:
        """HTTP requests sent so far, retries included."""
        return self._transport.requests

    def part_threads(self) -> ThreadPoolExecutor:
        """The threads multipart writers send their parts on (PART_THREADS, shared by every writer)."""
        with self._parts_lock:
            if self._parts is None:
                self._parts = ThreadPoolExecutor(PART_THREADS, thread_name_prefix="s3 parts")
            return self._parts

    def close(self) -> None:
        with self._parts_lock:
            parts, self._parts = self._parts, None
            fetcher, self._fetcher = self._fetcher, None
        if parts is not None:
            parts.shutdown(wait=True)
        if fetcher is not None:
            fetcher.close()
        self._transport.close()

    def __enter__(self) -> S3Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- requests and errors ----

    def what(self, key: str | None) -> str:
        """`s3://bucket/key`, as messages name an object."""
        return self._what(key)

    def signed_get(self, key: str, start: int, end: int) -> bytes:
        """The head of a GET of bytes [start, end), signed now, for a caller sending it itself (counted)."""
        self._transport.count()
        return self._transport.signed_head("GET", self._host, self._path(key), None,
                                           {"range": f"bytes={start}-{end - 1}"}, sigv4.EMPTY_SHA256, 0,
                                           self._what(key))

    def _what(self, key: str | None) -> str:
        return f"s3://{self.settings.bucket}/{key}" if key is not None else f"s3://{self.settings.bucket}"

    def _path(self, key: str | None) -> str:
        if key is None:
            return self._prefix + "/"
        if not key:
            raise ProgrammingError("S3 object key is empty")
        return f"{self._prefix}/{key}"

    def _request(self, method: str, key: str | None, *, query: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None, body: bytes | bytearray | memoryview = b"",
                 ok: tuple[int, ...] = (200,), fine: tuple[str, ...] = (),
                 payload_hash: str | None = None) -> Response:
        """Send and check the status; an S3 error whose code is in `fine` counts as success."""
        what = self._what(key)
        resp = self._transport.request(method, self._host, self._path(key), query, headers, body, what=what,
                                       payload_hash=payload_hash)
        if resp.status not in ok and not (fine and _error_fields(resp)[0] in fine):
            raise self._error(method, what, resp)
        return resp

    def _error(self, method: str, what: str, resp: Response) -> BoxboxError:
        """One line: the operation, the object, S3's code and message; nothing that was signed."""
        code, message = _error_fields(resp)
        detail = f"{code}: {message}" if code and message else code or f"HTTP {resp.status} {resp.reason}"
        detail = " ".join(detail.split())[:300]
        text = f"S3 {method} {what}: {detail}"
        if resp.attempts > 1:
            text += f" (after {resp.attempts} attempts)"
        if resp.status == 404:
            return NotFound(text)
        if resp.status == 412:
            err = PreconditionFailed(text)
            #: an earlier attempt may have succeeded: the 412 may be our own write (docs/S3.md)
            err.retried = resp.attempts > 1
            return err
        if resp.status == 403:
            return PermissionDenied(text, hint="check the S3 access key, secret key and bucket policy")
        return StorageError(text)

    # ---- objects ----

    def put_object(self, key: str, data: bytes | bytearray | memoryview, *, if_none_match: bool = False,
                   if_match: str | None = None, sha256: bytes | None = None) -> str:
        """Store `data` under `key` and return its ETag; 412 (a lost condition) is PreconditionFailed.

        When a retried conditional PUT gets 412 and the object now holds exactly our bytes,
        the first attempt succeeded and only its answer was lost: that counts as success.
        `sha256`: the body's SHA-256 if the caller has it already (a wrong one is refused by
        the store, 400 BadDigest, like a body damaged on the way).
        """
        payload = bytes(data)
        md5 = hashlib.md5(payload)
        if sha256 is None:
            sha256 = hashlib.sha256(payload).digest()
        # both are checked by the store (400 BadDigest); SeaweedFS ignores a wrong
        # x-amz-content-sha256, so the signature alone does not protect the body there
        headers = {"content-md5": base64.b64encode(md5.digest()).decode(),
                   "x-amz-checksum-sha256": base64.b64encode(sha256).decode(),
                   "content-type": "application/octet-stream"}
        if if_none_match:
            headers["if-none-match"] = "*"
        if if_match is not None:
            headers["if-match"] = f'"{_strip_etag(if_match)}"'
        try:
            resp = self._request("PUT", key, headers=headers, body=payload, payload_hash=sha256.hex())
        except PreconditionFailed as e:
            if e.retried and self._holds(key, md5.hexdigest()):
                return md5.hexdigest()
            raise
        etag = _strip_etag(resp.headers.get("etag", ""))
        if _PLAIN_MD5.match(etag) and etag != md5.hexdigest():
            raise IntegrityError(f"S3 PUT {self._what(key)}: stored ETag {etag}, "
                                 f"expected MD5 {md5.hexdigest()} of the {len(payload)} bytes sent")
        return etag

    def _holds(self, key: str, md5_hex: str) -> bool:
        try:
            return self.head_object(key).etag == md5_hex
        except NotFound:
            return False

    def writer(self, key: str, *, if_none_match: bool = False, if_match: str | None = None) -> S3Writer:
        """A streaming writer: one PUT if the total fits in part_size, else a multipart upload."""
        return S3Writer(self, key, if_none_match=if_none_match, if_match=if_match)

    def get_object(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of the object (end exclusive, None = to the end).

        A whole read is checked against the object's MD5 ETag and its stored SHA-256
        checksum when the store has them; a mismatch is read once more, then IntegrityError.
        """
        if start < 0 or (end is not None and end < start):
            raise ProgrammingError(f"S3 GET {self._what(key)}: bad range {start}..{end}")
        if end is not None and end == start:
            return b""
        ranged = bool(start) or end is not None
        headers = {"range": f"bytes={start}-{'' if end is None else end - 1}"} if ranged else {
            "x-amz-checksum-mode": "ENABLED"}
        for attempt in (1, 2):
            resp = self._request("GET", key, headers=headers, ok=(200, 206, 416))
            if resp.status == 416:  # start at or past the end
                return b""
            problem = whole_body_problem(resp) if resp.status == 200 else ""
            if not problem:
                # a 200 to a ranged GET is the whole object from a server that ignores Range
                return resp.body[start:end] if resp.status == 200 and ranged else resp.body
            log.warning("S3 GET %s: %s (attempt %d)", self._what(key), problem, attempt)
        raise IntegrityError(f"S3 GET {self._what(key)}: {problem}, twice")

    def fetch_ahead(self, key: str, start: int, end: int) -> Future[bytes]:
        """Bytes [start, end) of `key` (fewer if it is shorter), fetched in the background by the fetcher.

        A plain answer only (docs/S3.md "Speed"): `NotFound` for a 404, and anything else that is not a
        clean 206 or 416 a `StorageError` with nothing retried, for the caller to read again with `get_object`.
        """
        with self._parts_lock:
            if self._fetcher is None:
                self._fetcher = Fetcher(self, FETCH_CONNECTIONS)
            fetcher = self._fetcher
        return fetcher.get(key, start, end)

    def open(self, key: str) -> BinaryIO:
        """A read-only, seekable file over the object, read with ranged GETs and a read-ahead buffer."""
        return S3Reader(self, key, self.head_object(key))  # type: ignore[return-value]

    def get_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        """Bytes [start, end) of the version with `etag`; PreconditionFailed if it was replaced."""
        resp = self._request("GET", key, headers={"range": f"bytes={start}-{end - 1}",
                                                  "if-match": f'"{etag}"'}, ok=(200, 206))
        if resp.status == 200:
            return resp.body[start:end]
        return resp.body

    def head_object(self, key: str) -> ObjectInfo:
        resp = self._request("HEAD", key)
        try:
            size = int(resp.headers.get("content-length", ""))
        except ValueError:
            raise StorageError(f"S3 HEAD {self._what(key)}: no Content-Length in the response") from None
        return ObjectInfo(key, size, _strip_etag(resp.headers.get("etag", "")))

    def delete_object(self, key: str) -> None:
        """Remove the object; a key that is already gone is not an error (S3 semantics)."""
        self._request("DELETE", key, ok=(200, 204), fine=("NoSuchKey",))

    def list_objects(self, prefix: str, *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order, one ListObjectsV2 page at a time."""
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(page_size), "encoding-type": "url"}
        while True:
            resp = self._request("GET", None, query=query)
            root = _xml(resp.body, f"list {self._what(prefix)}")
            encoded = _child(root, "EncodingType") == "url"
            for item in _children(root, "Contents"):
                key = _child(item, "Key")
                yield ObjectInfo(unquote_plus(key) if encoded else key, int(_child(item, "Size") or 0),
                                 _strip_etag(_child(item, "ETag")))
            token = _child(root, "NextContinuationToken")
            if _child(root, "IsTruncated") != "true" or not token:
                return
            query["continuation-token"] = token

    # ---- bucket ----

    def create_bucket(self) -> None:
        """Create the bucket; fine if it already exists and is ours."""
        body = b""
        if self.settings.region != "us-east-1":
            body = ("<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                    f"<LocationConstraint>{escape(self.settings.region)}</LocationConstraint>"
                    "</CreateBucketConfiguration>").encode()
        self._request("PUT", None, body=body, fine=("BucketAlreadyOwnedByYou",))

    def abort_incomplete_uploads(self, prefix: str) -> int:
        """Abort every unfinished multipart upload under `prefix` (left by a crash); return how many."""
        # no encoding-type=url here: SeaweedFS 4.48 claims it but sends the keys raw, so
        # decoding would turn "+" into " " (keys with XML-invalid characters are lost either way)
        query = {"uploads": "", "prefix": prefix}
        aborted = 0
        while True:
            root = _xml(self._request("GET", None, query=query).body, f"list uploads {self._what(prefix)}")
            for upload in _children(root, "Upload"):
                self.abort_upload(_child(upload, "Key"), _child(upload, "UploadId"))
                aborted += 1
            if _child(root, "IsTruncated") != "true":
                return aborted
            query["key-marker"] = _child(root, "NextKeyMarker")
            query["upload-id-marker"] = _child(root, "NextUploadIdMarker")

    # ---- multipart primitives (S3Writer drives them) ----

    def create_upload(self, key: str) -> str:
        resp = self._request("POST", key, query={"uploads": ""},
                             headers={"content-type": "application/octet-stream"})
        upload_id = _child(_xml(resp.body, f"create upload {self._what(key)}"), "UploadId")
        if not upload_id:
            raise StorageError(f"S3 POST {self._what(key)}: no UploadId in the response")
        return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes | bytearray | memoryview) -> str:
        payload = bytes(data)
        md5 = hashlib.md5(payload)
        # Content-MD5 only: AWS refuses a part checksum the upload was not created with
        resp = self._request("PUT", key, query={"partNumber": str(number), "uploadId": upload_id},
                             headers={"content-md5": base64.b64encode(md5.digest()).decode()}, body=payload)
        etag = _strip_etag(resp.headers.get("etag", ""))
        if _PLAIN_MD5.match(etag) and etag != md5.hexdigest():
            raise IntegrityError(f"S3 PUT {self._what(key)} part {number}: stored ETag {etag}, "
                                 f"expected MD5 {md5.hexdigest()}")
        return etag

    def complete_upload(self, key: str, upload_id: str, etags: list[str], *, if_none_match: bool = False,
                        if_match: str | None = None) -> str:
        """Join the parts; returns the object's ETag (MD5 of the part MD5s, "-", part count).

        A retry after a lost answer finds the upload gone (404 NoSuchUpload) or, if
        conditional, the key taken (412): when the object's ETag is the one these exact parts
        make, the first attempt succeeded.
        """
        parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>\"{etag}\"</ETag></Part>"
                        for n, etag in enumerate(etags, 1))
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        headers = {"content-type": "application/xml"}
        if if_none_match:
            headers["if-none-match"] = "*"
        if if_match is not None:
            headers["if-match"] = f'"{_strip_etag(if_match)}"'
        # a store whose part ETags are not MD5s gets no lost-answer recovery and no check
        expected = multipart_etag(etags) if all(_PLAIN_MD5.match(e) for e in etags) else ""
        what = self._what(key)
        resp = self._transport.request("POST", self._host, self._path(key), {"uploadId": upload_id}, headers, body,
                                       what=what, retry_if=_error_in_body)
        if resp.status != 200 or _error_in_body(resp):
            err = self._error("POST", what, resp)
            if (resp.attempts > 1 and expected and isinstance(err, (NotFound, PreconditionFailed))
                    and self._holds(key, expected)):
                return expected
            raise err
        etag = _strip_etag(_child(_xml(resp.body, f"complete upload {what}"), "ETag"))
        if expected and _MULTIPART_ETAG.match(etag) and etag != expected:
            raise IntegrityError(f"S3 POST {what}: multipart ETag {etag}, expected {expected} from the parts sent")
        return etag or expected

    def abort_upload(self, key: str, upload_id: str) -> None:
        self._request("DELETE", key, query={"uploadId": upload_id}, ok=(200, 204), fine=("NoSuchUpload",))

