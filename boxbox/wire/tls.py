"""TLS 1.3 contexts: certificates verified both ways against the CA, host name checked.

The server requires a client certificate signed by the configured CA and, when a CRL is
configured, rejects revoked ones; the account is taken from the certificate's CN
(`BACKUP-%08x`), never from anything the client sends. The client verifies the server
certificate and its host name (Box Backup never checked the host name).
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

from boxbox.ca.names import account_from_cn
from boxbox.errors import ConfigError, FormatError, PermissionDenied


def _check_file(path: Path, what: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"{path}: {what} not found")


def _base(purpose: int, certificate: Path, private_key: Path, ca_certificate: Path) -> ssl.SSLContext:
    for path, what in ((certificate, "certificate"), (private_key, "private key"), (ca_certificate, "CA certificate")):
        _check_file(path, what)
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(str(certificate), str(private_key))
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"{certificate}: cannot load certificate and key {private_key}: {e}") from None
    try:
        ctx.load_verify_locations(cafile=str(ca_certificate))
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"{ca_certificate}: cannot load CA certificate: {e}") from None
    return ctx


def _load_crl(ctx: ssl.SSLContext, crl: Path) -> None:
    """Add a CRL (PEM, or DER converted to PEM) and make OpenSSL check the leaf against it."""
    _check_file(crl, "certificate revocation list")
    data = Path(crl).read_bytes()
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            ctx.load_verify_locations(cafile=str(crl))
        else:
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import Encoding

            pem = x509.load_der_x509_crl(data).public_bytes(Encoding.PEM)
            with tempfile.NamedTemporaryFile(suffix=".crl") as tmp:
                tmp.write(pem)
                tmp.flush()
                ctx.load_verify_locations(cafile=tmp.name)
    except (ssl.SSLError, ValueError, OSError) as e:
        raise ConfigError(f"{crl}: cannot load certificate revocation list: {e}") from None
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def server_context(certificate: Path, private_key: Path, ca_certificate: Path,
                   crl: Path | None = None) -> ssl.SSLContext:
    """Context for `boxbox server`; build a new one to reload the CRL (SIGHUP)."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, certificate, private_key, ca_certificate)
    if crl is not None:
        _load_crl(ctx, crl)
    return ctx


def client_context(certificate: Path, private_key: Path, ca_certificate: Path) -> ssl.SSLContext:
    """Context for clients: verifies the server certificate and its host name."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, certificate, private_key, ca_certificate)
    ctx.check_hostname = True
    return ctx


def peer_account(sock: ssl.SSLSocket) -> int:
    """The account number in the verified client certificate of `sock`."""
    cert = sock.getpeercert()
    if not cert:
        raise PermissionDenied("no client certificate")
    cns = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    if len(cns) != 1:
        raise PermissionDenied(f"client certificate must have exactly one CN, has {len(cns)}")
    try:
        return account_from_cn(cns[0])
    except FormatError as e:
        raise PermissionDenied(str(e.args[0])) from None
