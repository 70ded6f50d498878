"""AWS Signature Version 4 for S3 requests, with a signed payload hash.

Every request carries `x-amz-content-sha256` with the real SHA-256 of its body, never
`UNSIGNED-PAYLOAD`: over plain http that is the only thing binding the body to the
signature, and over https it lets the store refuse a body damaged on the way.

Reference: AWS S3 API "Signature Calculations for the Authorization Header: Transferring
Payload in a Single Chunk"; its four worked examples are the vectors in tests/s3/test_sigv4.py.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_ENCODED = [chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in range(256)]
#: text that encodes to itself (store keys are such): checked in C instead of byte by byte in Python
_PLAIN = re.compile(r"[A-Za-z0-9\-_.~]*")
_PLAIN_PATH = re.compile(r"[A-Za-z0-9\-_.~/]*")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """Percent-encode UTF-8 bytes the SigV4 way: only A-Z a-z 0-9 - _ . ~ stay, hex is upper case."""
    if (_PLAIN_PATH if keep_slash else _PLAIN).fullmatch(text):
        return text
    encoded = "".join(_ENCODED[b] for b in text.encode("utf-8", "surrogatepass"))
    return encoded.replace("%2F", "/") if keep_slash else encoded


def canonical_uri(path: str) -> str:
    """The request path as S3 signs it (and as we send it): each segment encoded once, `/` kept."""
    return uri_encode(path if path.startswith("/") else "/" + path, keep_slash=True)


def canonical_query(params: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """Query parameters encoded (including `/`), sorted by name then value; a bare name gets `=`."""
    items = params.items() if isinstance(params, Mapping) else params
    pairs = sorted((uri_encode(k), uri_encode(v)) for k, v in items)
    return "&".join(f"{k}={v}" for k, v in pairs)


def _header_value(value: str) -> str:
    return " ".join(value.split())


def canonical_request(method: str, uri: str, query: str, headers: Mapping[str, str],
                      payload_hash: str) -> tuple[str, str]:
    """(canonical request, signed header list); `uri` and `query` already canonical."""
    lowered = sorted((k.lower().strip(), _header_value(str(v))) for k, v in headers.items())
    signed = ";".join(k for k, _ in lowered)
    lines = "".join(f"{k}:{v}\n" for k, v in lowered)
    return f"{method}\n{uri}\n{query}\n{lines}\n{signed}\n{payload_hash}", signed


def scope(date: str, region: str) -> str:
    return f"{date}/{region}/{SERVICE}/aws4_request"


def string_to_sign(amz_date: str, region: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope(amz_date[:8], region)}\n{digest}"


@functools.lru_cache(maxsize=16)
def signing_key(secret_key: str, date: str, region: str) -> bytes:
    """The day's key (four HMACs): remembered, since every request of the day signs with it."""
    key = hmac.digest(("AWS4" + secret_key).encode("utf-8"), date.encode(), "sha256")
    for part in (region, SERVICE, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


@functools.lru_cache(maxsize=16)
def _keyed(secret_key: str, date: str, region: str) -> hmac.HMAC:
    """An HMAC-SHA256 already keyed with the day's signing key, to copy per request: the copy skips the key
    set-up, and its update of a short string keeps the GIL (`hmac.digest` releases and re-takes it each call,
    a wait among the read-ahead's threads)."""
    return hmac.new(signing_key(secret_key, date, region), digestmod=hashlib.sha256)


def signature(secret_key: str, date: str, region: str, text: str) -> str:
    """Hex HMAC-SHA256 of `text` under the day's signing key."""
    mac = _keyed(secret_key, date, region).copy()
    mac.update(text.encode())
    return mac.hexdigest()


def amz_date(now: datetime.datetime) -> str:
    return now.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def sign(method: str, path: str, query: Mapping[str, str] | Iterable[tuple[str, str]],
         headers: Mapping[str, str], payload_hash: str, *, access_key: str, secret_key: str,
         region: str, now: datetime.datetime) -> dict[str, str]:
    """The headers to send: `headers` plus x-amz-date, x-amz-content-sha256 and Authorization.

    `headers` must include `host`; every header given is signed.
    """
    stamp = amz_date(now)
    out = dict(headers)
    out["x-amz-date"] = stamp
    out["x-amz-content-sha256"] = payload_hash
    canonical, signed = canonical_request(method, canonical_uri(path), canonical_query(query), out, payload_hash)
    signed_hex = signature(secret_key, stamp[:8], region, string_to_sign(stamp, region, canonical))
    out["Authorization"] = (f"{ALGORITHM} Credential={access_key}/{scope(stamp[:8], region)}, "
                            f"SignedHeaders={signed}, Signature={signed_hex}")
    return out
