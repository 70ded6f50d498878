"""TLS against a live `boxbox server`: a TLS 1.2 client and weak client certificates are refused.

Wrong CA, expired, revoked and wrong-host-name certificates are already tested in
tests/test_server.py (test_refused_certificates, test_revoked_certificate_refused_after_sighup),
tests/test_ca.py and tests/test_wire_tls.py.
"""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from boxbox.errors import PermissionDenied, ProtocolError
from boxbox.wire import tls
from boxbox.wire.client import Client
from tests.fault.harness import FaultServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, test_ca: Any) -> Iterator[tuple[FaultServer, int]]:
    srv = FaultServer(tmp_path_factory.mktemp("tls"), test_ca)
    account = srv.new_account()
    srv.start()
    yield srv, account
    srv.stop()


def _handshake(srv: FaultServer, ctx: ssl.SSLContext) -> None:
    """Connect and do one request: a refused peer fails in the handshake or at the first read."""
    c = Client.connect("127.0.0.1", srv.port, ctx, server_hostname="localhost", timeout=10)
    c.login(read_only=True)
    c.usage()
    c.finish()


def test_good_client_works(live: tuple[FaultServer, int]) -> None:
    srv, account = live
    d = srv.ca.client_dir(account)
    _handshake(srv, tls.client_context(d / "client.crt", d / "client.key", d / "ca.crt"))


def test_tls12_client_is_refused(live: tuple[FaultServer, int]) -> None:
    srv, account = live
    d = srv.ca.client_dir(account)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(d / "client.crt", d / "client.key")
    ctx.load_verify_locations(d / "ca.crt")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.recv(1)


def _sign_weak(test_ca: Any, account: int, out: Path, key: Any, algorithm: Any) -> tuple[Path, Path]:
    """A client certificate for ACCOUNT from the real test CA, with a weak key or a weak signature hash."""
    ca_key = serialization.load_pem_private_key((test_ca.cadir / "ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(test_ca.ca_cert.read_bytes())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"BACKUP-{account:08x}")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, algorithm))  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    (out / "client.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "client.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (out / "client.key").chmod(0o600)
    return out / "client.crt", out / "client.key"


def _lax_context(srv: FaultServer, crt: Path, key: Path) -> ssl.SSLContext:
    """A hostile client that lowers its own OpenSSL security level so it can offer a weak certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(crt, key)
    ctx.load_verify_locations(srv.ca.ca_cert)
    return ctx


def _refused(srv: FaultServer, crt: Path, key: Path) -> None:
    with pytest.raises((PermissionDenied, ProtocolError, ssl.SSLError, ConnectionError)):
        _handshake(srv, _lax_context(srv, crt, key))


def test_rsa1024_client_certificate_is_refused(live: tuple[FaultServer, int], tmp_path: Path) -> None:
    srv, account = live
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    crt, key = _sign_weak(srv.ca, account, tmp_path / "rsa1024", weak, hashes.SHA256())
    with pytest.raises(Exception, match="too small|KEY_TOO_SMALL"):
        tls.client_context(crt, key, srv.ca.ca_cert)  # boxbox's own client will not use it
    _refused(srv, crt, key)  # and the server refuses a client that does


def test_sha1_signed_client_certificate_is_refused(live: tuple[FaultServer, int], tmp_path: Path) -> None:
    """cryptography will not sign with SHA-1, so openssl(1) does, with the test CA's key."""
    srv, account = live
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    out = tmp_path / "sha1"
    out.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    (out / "client.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (out / "client.key").chmod(0o600)
    (out / "ext").write_text("basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n")
    subprocess.run(["openssl", "req", "-new", "-key", str(out / "client.key"), "-subj", f"/CN=BACKUP-{account:08x}",
                    "-out", str(out / "client.csr")], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(out / "client.csr"), "-CA", str(srv.ca.ca_cert),
                    "-CAkey", str(srv.ca.cadir / "ca.key"), "-sha1", "-days", "30", "-set_serial", "4242",
                    "-extfile", str(out / "ext"), "-out", str(out / "client.crt")], check=True, capture_output=True)
    cert = x509.load_pem_x509_certificate((out / "client.crt").read_bytes())
    assert cert.signature_hash_algorithm is not None and cert.signature_hash_algorithm.name == "sha1"
    _refused(srv, out / "client.crt", out / "client.key")


def test_sha256_control_certificate_made_the_same_way_works(live: tuple[FaultServer, int], tmp_path: Path) -> None:
    """The weak-certificate tests above fail for the weakness alone: the same recipe with SHA-256 and P-256 works."""
    srv, account = live
    key = ec.generate_private_key(ec.SECP256R1())
    crt, keyfile = _sign_weak(srv.ca, account, tmp_path / "good", key, hashes.SHA256())
    _handshake(srv, tls.client_context(crt, keyfile, srv.ca.ca_cert))
    _handshake(srv, _lax_context(srv, crt, keyfile))  # the hostile client's context is not what fails
