"""https: the certificate chain and the host name are always verified; `ca_file` adds a CA.

A TLS-terminating FaultProxy in front of SeaweedFS serves a certificate from a CA made
here, so the whole path (TLS, SigV4 with the https Host header) is real.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from boxbox.errors import StorageError
from boxbox.s3.client import S3Client, S3Settings
from tests.s3.proxy import FaultProxy


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
          *, ca: bool, names: list[x509.GeneralName]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _server_context(tmp: Path, names: list[x509.GeneralName]) -> tuple[ssl.SSLContext, Path]:
    """(server context with a fresh CA's certificate for `names`, that CA's PEM file)."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("boxbox test S3 CA", ca_key, "boxbox test S3 CA", ca_key, ca=True, names=[])
    cert = _cert("s3 test server", key, "boxbox test S3 CA", ca_key, ca=False, names=names)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp / "server.pem", tmp / "server.key")
    return ctx, tmp / "ca.pem"


def _tls_proxy(seaweed, tmp: Path, names: list[x509.GeneralName]) -> tuple[FaultProxy, Path]:  # noqa: ANN001
    ctx, ca = _server_context(tmp, names)
    return FaultProxy(int(seaweed.endpoint.rsplit(":", 1)[1]), tls=ctx).start(), ca


@pytest.fixture
def good_proxy(seaweed, tmp_path: Path) -> Iterator[tuple[FaultProxy, Path]]:  # noqa: ANN001
    proxy, ca = _tls_proxy(seaweed, tmp_path / "good", [x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    yield proxy, ca
    proxy.stop()


def _via(seaweed, endpoint: str, **changes: object) -> S3Settings:  # noqa: ANN001
    settings = seaweed.new_bucket()
    return S3Settings(**{**settings.__dict__, "endpoint": endpoint, "allow_http": False, **changes})


def test_https_with_ca_file_works_end_to_end(seaweed, good_proxy: tuple[FaultProxy, Path]) -> None:  # noqa: ANN001
    proxy, ca = good_proxy
    with S3Client(_via(seaweed, proxy.endpoint, ca_file=str(ca))) as c:
        c.put_object("over/tls", b"secret bytes")
        assert c.get_object("over/tls") == b"secret bytes"
        assert [o.key for o in c.list_objects("over/")] == ["over/tls"]


def test_https_without_the_ca_is_refused_at_once(seaweed, good_proxy: tuple[FaultProxy, Path]) -> None:  # noqa: ANN001
    proxy, _ = good_proxy
    with S3Client(_via(seaweed, proxy.endpoint)) as c:
        with pytest.raises(StorageError, match="TLS certificate of localhost not trusted"):
            c.get_object("k")
        assert c.requests == 1  # not retried: it will not get better
    assert proxy.log == []


def test_https_host_name_is_verified(seaweed, tmp_path: Path) -> None:  # noqa: ANN001
    proxy, ca = _tls_proxy(seaweed, tmp_path / "other", [x509.DNSName("s3.other.example")])
    try:
        with S3Client(_via(seaweed, proxy.endpoint, ca_file=str(ca))) as c:
            with pytest.raises(StorageError, match="not trusted.*[Hh]ostname mismatch"):
                c.get_object("k")
    finally:
        proxy.stop()


def test_the_fetcher_speaks_tls_and_checks_the_certificate(seaweed, good_proxy: tuple[FaultProxy, Path]) -> None:  # noqa: ANN001
    proxy, ca = good_proxy
    settings = _via(seaweed, proxy.endpoint, ca_file=str(ca))
    with S3Client(settings) as c:
        for i in range(20):
            c.put_object(f"ahead/{i}", b"%d secret bytes" % i)
        futures = [c.fetch_ahead(f"ahead/{i}", 0, 1 << 20) for i in range(20)]
        assert [f.result(10) for f in futures] == [b"%d secret bytes" % i for i in range(20)]
    with S3Client(S3Settings(**{**settings.__dict__, "ca_file": None})) as c:
        with pytest.raises(StorageError, match="TLS certificate of localhost not trusted"):
            c.fetch_ahead("ahead/0", 0, 1 << 20).result(10)
