"""The certificate authority: make the CA, sign server and client certificates, revoke.

A CA directory holds `ca.key` (0600), `ca.crt`, `crl.pem` and `issued.json` (see
`boxbox.ca.index`). Keys are never overwritten: a key is created with a hard link that
fails if the name exists, so a second `init` or `sign-*` cannot destroy a working setup.

Keys are ECDSA P-256. TLS 1.3 makes ecdsa_secp256r1_sha256 mandatory to implement
(RFC 8446 section 9.1), so every OpenSSL, LibreSSL and BoringSSL that stdlib `ssl` may be
linked against accepts it; Ed25519 certificates are optional in TLS 1.3 and missing from
older OpenSSL 1.1.0 / LibreSSL builds still found on small boxes. P-256 signing is also
cheap on ARM cores without crypto extensions, unlike 2048-bit RSA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from boxbox.atomic import create_exclusive, write_atomic
from boxbox.ca import index as ca_index
from boxbox.ca.index import Issued
from boxbox.ca.names import account_from_cn, cn_for_account
from boxbox.errors import FormatError, IntegrityError, NotFound, PermissionDenied, UsageError

__all__ = ["init_ca", "sign_server", "sign_client", "make_request", "revoke", "list_issued",
           "cn_for_account", "account_from_cn", "Signed", "Issued", "DEFAULT_CA_DAYS", "DEFAULT_CERT_DAYS"]

log = logging.getLogger(__name__)

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
CRL = "crl.pem"
SERVER_KEY, SERVER_CERT = "server.key", "server.crt"
CLIENT_KEY, CLIENT_CERT, CLIENT_CSR = "client.key", "client.crt", "client.csr"

DEFAULT_CA_DAYS = 7305  # 20 years: re-issuing every certificate of a fleet is the costly part
DEFAULT_CERT_DAYS = 3653  # 10 years: an expired client certificate silently stops its backups
# Certificates start a day in the past: a Raspberry Pi has no RTC and may boot with a
# clock behind the CA's, and a "not yet valid" refusal at first boot is hard to diagnose.
BACKDATE = dt.timedelta(days=1)
MAX_DAYS = 36525  # 100 years; far beyond any use, and keeps dates inside X.509's range
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


@dataclass(frozen=True)
class Signed:
    """What a signing call produced: the serial to revoke it by and the files written."""

    serial: int
    cn: str
    not_after: dt.datetime
    cert: Path
    key: Path | None  # None when a CSR was signed: the key stayed on the client


def init_ca(cadir: str | os.PathLike[str], days: int = DEFAULT_CA_DAYS, *, now: dt.datetime | None = None) -> Path:
    """Create CADIR with a new CA key and self-signed certificate; return the certificate path."""
    cadir = Path(cadir)
    _check_days(days)
    now = now or _now()
    _mkdir(cadir, 0o700, "CADIR")
    with ca_index.locked(cadir):
        _refuse_existing(cadir / CA_KEY)
        key = ec.generate_private_key(ec.SECP256R1())
        # A unique name per CA, so "signed by another CA" errors say which one.
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"boxbox CA {os.urandom(4).hex()}")])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        _create_key(cadir / CA_KEY, key)
        write_atomic(cadir / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        index = ca_index.Index()
        _write_crl(cadir, key, cert, index, now)
        ca_index.save(cadir, index)
    log.info("created CA %s in %s", name.rfc4514_string(), cadir)
    return cadir / CA_CERT


def sign_server(cadir: str | os.PathLike[str], hostname: str, outdir: str | os.PathLike[str],
                days: int = DEFAULT_CERT_DAYS, *, alt_names: Sequence[str] = (),
                now: dt.datetime | None = None) -> Signed:
    """Make `server.key` + `server.crt` (+ `ca.crt`) in OUTDIR for HOSTNAME and ALT_NAMES.

    Each name goes into subjectAltName as a DNS name, or as an IP address if it is one;
    HOSTNAME is also the CN.
    """
    names = [hostname, *alt_names]
    san = x509.SubjectAlternativeName([_general_name(n) for n in dict.fromkeys(names)])
    ca = _load_ca(Path(cadir))
    outdir = _outdir(outdir)
    _refuse_existing(outdir / SERVER_KEY)
    key = ec.generate_private_key(ec.SECP256R1())
    return _issue(Path(cadir), ca, "server", hostname, key, key.public_key(), outdir / SERVER_CERT,
                  outdir / SERVER_KEY, days, now, [(san, False)], ExtendedKeyUsageOID.SERVER_AUTH)


def sign_client(cadir: str | os.PathLike[str], account: int, outdir: str | os.PathLike[str],
                csr: str | os.PathLike[str] | None = None, days: int = DEFAULT_CERT_DAYS, *,
                now: dt.datetime | None = None) -> Signed:
    """Make `client.crt` (+ `ca.crt`) in OUTDIR for ACCOUNT: from a CSR, or with a new `client.key`."""
    cn = cn_for_account(account)
    ca = _load_ca(Path(cadir))
    outdir = _outdir(outdir)
    key: ec.EllipticCurvePrivateKey | None = None
    if csr is None:
        _refuse_existing(outdir / CLIENT_KEY)
        key = ec.generate_private_key(ec.SECP256R1())
        public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey = key.public_key()
    else:
        public = _read_csr(Path(csr), cn)
    return _issue(Path(cadir), ca, "client", cn, key, public, outdir / CLIENT_CERT,
                  outdir / CLIENT_KEY if key else None, days, now, [], ExtendedKeyUsageOID.CLIENT_AUTH)


def make_request(account: int, outdir: str | os.PathLike[str]) -> Path:
    """On the client box: make `client.key` and `client.csr` for ACCOUNT; return the CSR path.

    The CA signs the CSR elsewhere, so the client's private key never leaves the client.
    """
    cn = cn_for_account(account)
    outdir = _outdir(outdir)
    _refuse_existing(outdir / CLIENT_KEY)
    key = ec.generate_private_key(ec.SECP256R1())
    req = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))
    _create_key(outdir / CLIENT_KEY, key)
    write_atomic(outdir / CLIENT_CSR, req.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return outdir / CLIENT_CSR


def revoke(cadir: str | os.PathLike[str], serial: int, *, now: dt.datetime | None = None) -> Path:
    """Mark SERIAL revoked and rewrite the CRL; return the CRL path (copy it to the server)."""
    cadir = Path(cadir)
    now = now or _now()
    ca_key, ca_cert = _load_ca(cadir)
    with ca_index.locked(cadir):
        index = ca_index.load(cadir)
        entry = index.find(serial)
        if entry is None:
            raise NotFound(f"serial {serial} in {cadir / ca_index.INDEX_NAME} (see `boxbox ca list {cadir}`)")
        if entry.revoked is None:
            entry.revoked = now
        index.crl_number += 1
        _write_crl(cadir, ca_key, ca_cert, index, now)
        ca_index.save(cadir, index)
    return cadir / CRL


def list_issued(cadir: str | os.PathLike[str]) -> list[Issued]:
    """Every certificate this CA signed, oldest first."""
    cadir = Path(cadir)
    _load_ca(cadir)
    return ca_index.load(cadir).issued


def _issue(cadir: Path, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], kind: str, cn: str,
           key: ec.EllipticCurvePrivateKey | None, public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
           cert_path: Path, key_path: Path | None, days: int, now: dt.datetime | None,
           extensions: list[tuple[x509.ExtensionType, bool]], usage: x509.ObjectIdentifier) -> Signed:
    """Sign under the CA lock, record the serial, then write key, certificate and ca.crt."""
    _check_days(days)
    now = now or _now()
    ca_key, ca_cert = ca
    not_after = now + dt.timedelta(days=days)
    if not_after > ca_cert.not_valid_after_utc:
        left = (ca_cert.not_valid_after_utc - now).days
        raise UsageError(f"--days {days} would outlive the CA certificate (expires "
                         f"{ca_index.format_time(ca_cert.not_valid_after_utc)}); use --days {left} or less")
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    with ca_index.locked(cadir):
        index = ca_index.load(cadir)
        serial = index.next_serial
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject)
            .public_key(public)
            .serial_number(serial)
            .not_valid_before(now - BACKDATE).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        )
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical=critical)
        cert = builder.sign(ca_key, hashes.SHA256())
        # Record the serial before anything leaves the CA, so it is never handed out twice.
        index.next_serial = serial + 1
        index.issued.append(Issued(serial, kind, cn, not_after))
        ca_index.save(cadir, index)
    if key is not None and key_path is not None:
        _create_key(key_path, key)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    write_atomic(cert_path.parent / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    log.info("issued serial %d (%s %s) into %s", serial, kind, cn, cert_path.parent)
    return Signed(serial, cn, not_after, cert_path, key_path)


def _load_ca(cadir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_path, cert_path = cadir / CA_KEY, cadir / CA_CERT
    if not key_path.exists() or not cert_path.exists():
        raise NotFound(f"CA in {cadir} (no {CA_KEY} or {CA_CERT} there)", hint=f"create one with `boxbox ca init {cadir}`")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise FormatError(f"{key_path}: not an unencrypted PEM private key ({e})") from None
    except PermissionError:
        raise PermissionDenied(f"cannot read {key_path} (run as the user who made the CA)") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as e:
        raise FormatError(f"{cert_path}: not a PEM certificate ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise IntegrityError(f"{key_path} is not the key of {cert_path}")
    return key, cert


def _read_csr(path: Path, cn: str) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """The public key of a CSR, once its signature, CN and key type have been checked."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"CSR file {path}") from None
    try:
        req = (x509.load_pem_x509_csr(data) if data.lstrip().startswith(b"-----")
               else x509.load_der_x509_csr(data))
    except ValueError as e:
        raise FormatError(f"{path}: not a certificate signing request ({e})") from None
    if not req.is_signature_valid:
        raise IntegrityError(f"{path}: the CSR's signature does not match its public key")
    got = [a.value for a in req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if got != [cn]:
        raise PermissionDenied(f"{path} asks for CN {', '.join(map(str, got)) or '(none)'}, "
                               f"expected {cn} for account {account_from_cn(cn):x}")
    public = req.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name in ("secp256r1", "secp384r1"):
        return public
    if isinstance(public, rsa.RSAPublicKey) and public.key_size >= 2048:
        return public
    raise FormatError(f"{path}: key type {type(public).__name__} is not one TLS 1.3 clients all accept "
                      "(expected ECDSA P-256/P-384 or RSA >= 2048 bits)")


def _write_crl(cadir: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
               index: ca_index.Index, now: dt.datetime) -> None:
    # The CRL stays valid as long as the CA: nothing re-issues it on a schedule, and an
    # expired CRL would make a server with CRL checking refuse every client.
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - BACKDATE)
        .next_update(ca_cert.not_valid_after_utc)
        .add_extension(x509.CRLNumber(index.crl_number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    for entry in index.issued:
        if entry.revoked is not None:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(entry.revoked).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    write_atomic(cadir / CRL, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(name):
        raise UsageError(f"server name must be a DNS host name or an IP address, got {name!r}")
    return x509.DNSName(name.rstrip(".").lower())


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _create_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    try:
        create_exclusive(path, _key_pem(key), mode=0o600)
    except FileExistsError:
        _refuse_existing(path)
        raise


def _refuse_existing(path: Path) -> None:
    if path.exists():
        raise PermissionDenied(f"refusing to overwrite existing key {path}",
                               hint="move it away first if you really mean to replace it")


def _outdir(outdir: str | os.PathLike[str]) -> Path:
    return _mkdir(Path(outdir), 0o755, "--out")


def _mkdir(path: Path, mode: int, what: str) -> Path:
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{what} {path} exists and is not a directory") from None
    return path


def _check_days(days: int) -> None:
    if not 1 <= days <= MAX_DAYS:
        raise UsageError(f"--days must be 1..{MAX_DAYS}, got {days}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
