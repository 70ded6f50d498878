"""SigV4 against the worked examples in the AWS S3 API reference.

"Signature Calculations for the Authorization Header: Transferring Payload in a Single
Chunk" (docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html) signs four
requests to examplebucket with the documentation key pair at 2013-05-24T00:00:00Z; the
expected signatures below are the ones printed there.
"""

from __future__ import annotations

import datetime
import hashlib

import pytest

from boxbox.s3 import sigv4

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
HOST = "examplebucket.s3.amazonaws.com"
NOW = datetime.datetime(2013, 5, 24, tzinfo=datetime.timezone.utc)


def _sign(method: str, path: str, query: dict[str, str], headers: dict[str, str], payload_hash: str) -> str:
    return sigv4.sign(method, path, query, {"host": HOST, **headers}, payload_hash, access_key=ACCESS_KEY,
                      secret_key=SECRET_KEY, region="us-east-1", now=NOW)["Authorization"]


def test_get_object_example() -> None:
    auth = _sign("GET", "/test.txt", {}, {"range": "bytes=0-9"}, sigv4.EMPTY_SHA256)
    assert auth == ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
                    "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
                    "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def test_get_object_example_canonical_request() -> None:
    """The intermediate values the documentation prints for the GET example."""
    headers = {"host": HOST, "range": "bytes=0-9", "x-amz-content-sha256": sigv4.EMPTY_SHA256,
               "x-amz-date": "20130524T000000Z"}
    canonical, signed = sigv4.canonical_request("GET", "/test.txt", "", headers, sigv4.EMPTY_SHA256)
    assert canonical == ("GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n"
                         f"x-amz-content-sha256:{sigv4.EMPTY_SHA256}\nx-amz-date:20130524T000000Z\n\n"
                         f"host;range;x-amz-content-sha256;x-amz-date\n{sigv4.EMPTY_SHA256}")
    assert signed == "host;range;x-amz-content-sha256;x-amz-date"
    assert sigv4.string_to_sign("20130524T000000Z", "us-east-1", canonical) == (
        "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n"
        "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972")


def test_put_object_example_encodes_the_dollar_and_signs_the_payload() -> None:
    payload = b"Welcome to Amazon S3."
    payload_hash = hashlib.sha256(payload).hexdigest()
    assert payload_hash == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
    assert sigv4.canonical_uri("/test$file.text") == "/test%24file.text"
    auth = _sign("PUT", "/test$file.text", {}, {"date": "Fri, 24 May 2013 00:00:00 GMT",
                                                "x-amz-storage-class": "REDUCED_REDUNDANCY"}, payload_hash)
    assert auth.endswith("SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class, "
                         "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")


def test_get_bucket_lifecycle_example_bare_query_name() -> None:
    assert sigv4.canonical_query({"lifecycle": ""}) == "lifecycle="
    auth = _sign("GET", "/", {"lifecycle": ""}, {}, sigv4.EMPTY_SHA256)
    assert auth.endswith("Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")


def test_list_objects_example_sorts_the_query() -> None:
    assert sigv4.canonical_query([("prefix", "J"), ("max-keys", "2")]) == "max-keys=2&prefix=J"
    auth = _sign("GET", "/", {"prefix": "J", "max-keys": "2"}, {}, sigv4.EMPTY_SHA256)
    assert auth.endswith("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")


@pytest.mark.parametrize("raw, path, query", [
    ("a-b_c.d~e", "a-b_c.d~e", "a-b_c.d~e"),
    ("a b+c", "a%20b%2Bc", "a%20b%2Bc"),
    ("x/y", "x/y", "x%2Fy"),
    ("é€", "%C3%A9%E2%82%AC", "%C3%A9%E2%82%AC"),
    ("%41*'()!", "%2541%2A%27%28%29%21", "%2541%2A%27%28%29%21"),
])
def test_uri_encoding_keeps_only_unreserved(raw: str, path: str, query: str) -> None:
    assert sigv4.uri_encode(raw, keep_slash=True) == path
    assert sigv4.uri_encode(raw) == query


def test_header_values_are_trimmed_and_spaces_collapsed() -> None:
    canonical, signed = sigv4.canonical_request("GET", "/", "", {"X-Amz-Meta-A": "  a   b  ", "Host": "h"}, "p")
    assert "x-amz-meta-a:a b\n" in canonical
    assert signed == "host;x-amz-meta-a"


def test_signing_key_depends_on_date_and_region() -> None:
    keys = {sigv4.signing_key(SECRET_KEY, d, r) for d in ("20130524", "20130525") for r in ("us-east-1", "eu-west-1")}
    assert len(keys) == 4
