"""`boxbox ca`: certificates that really complete (or are refused by) a TLS 1.3 handshake."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from boxbox.ca import authority, index as ca_index
from boxbox.ca.names import account_from_cn
from boxbox.errors import FormatError, InUse, NotFound, PermissionDenied, UsageError
from tests.conftest import SessionCA, run_boxbox


@dataclass
class Outcome:
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    peer_cn: str | None = None
    version: str | None = None
    reply: bytes = b""


def _context(purpose: int, ca: Path, cert: Path, key: Path, crl: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    # X509_STRICT is the default from Python 3.13 on; certificates must pass it already.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cafile=str(ca))
    if crl is not None:
        ctx.load_verify_locations(cafile=str(crl))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def handshake(server_dir: Path, client_dir: Path, *, server_hostname: str = "localhost",
              crl: Path | None = None) -> Outcome:
    """One connection over 127.0.0.1: handshake, ping from the client, pong from the server.

    In TLS 1.3 the client may finish its handshake before the server has checked the client
    certificate, so the exchange after it is what shows a refusal on both sides.
    """
    server_ctx = _context(ssl.PROTOCOL_TLS_SERVER, server_dir / "ca.crt", server_dir / "server.crt",
                          server_dir / "server.key", crl)
    client_ctx = _context(ssl.PROTOCOL_TLS_CLIENT, client_dir / "ca.crt", client_dir / "client.crt",
                          client_dir / "client.key")
    out = Outcome()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(10)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                subject = cast("tuple[tuple[tuple[str, str], ...], ...]", (tls.getpeercert() or {})["subject"])
                out.peer_cn = dict(rdn[0] for rdn in subject)["commonName"]
                out.version = tls.version()
                if tls.recv(4) == b"ping":
                    tls.sendall(b"pong")
        except (OSError, ssl.SSLError) as e:
            out.server_error = e

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                tls.sendall(b"ping")
                out.reply = tls.recv(4)
    except (OSError, ssl.SSLError) as e:
        out.client_error = e
    finally:
        thread.join(15)
        listener.close()
    return out


def assert_refused_by_server(out: Outcome, reason: str) -> None:
    assert isinstance(out.server_error, ssl.SSLCertVerificationError), out
    assert reason in str(out.server_error), out.server_error
    assert out.reply != b"pong"


# ---- handshakes ----

def test_mutual_tls13_handshake_with_host_name_and_crl(test_ca: SessionCA) -> None:
    out = handshake(test_ca.server_dir, test_ca.client_dir(1), crl=test_ca.crl)
    assert (out.server_error, out.client_error) == (None, None)
    assert out.reply == b"pong" and out.version == "TLSv1.3"
    assert account_from_cn(out.peer_cn or "") == 1


def test_server_certificate_covers_its_ip_address(test_ca: SessionCA) -> None:
    out = handshake(test_ca.server_dir, test_ca.client_dir(1), server_hostname="127.0.0.1")
    assert out.reply == b"pong", out


def test_wrong_host_name_is_refused_by_client(test_ca: SessionCA) -> None:
    out = handshake(test_ca.server_dir, test_ca.client_dir(1), server_hostname="backup.example.com")
    assert isinstance(out.client_error, ssl.SSLCertVerificationError), out
    assert "mismatch" in str(out.client_error).lower()


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("other-ca")
    authority.init_ca(root / "ca")
    authority.sign_server(root / "ca", "localhost", root / "server")
    authority.sign_client(root / "ca", 1, root / "client")
    return root


def test_client_certificate_from_another_ca_is_refused(test_ca: SessionCA, other_ca: Path) -> None:
    stranger = other_ca / "client"
    (stranger / "ca.crt").write_bytes((test_ca.cadir / "ca.crt").read_bytes())  # it trusts our server
    assert_refused_by_server(handshake(test_ca.server_dir, stranger), "unable to get local issuer")


def test_server_certificate_from_another_ca_is_refused(test_ca: SessionCA, other_ca: Path) -> None:
    out = handshake(other_ca / "server", test_ca.client_dir(1))
    assert isinstance(out.client_error, ssl.SSLCertVerificationError), out
    assert out.reply == b""


def test_expired_client_certificate_is_refused(test_ca: SessionCA, tmp_path: Path) -> None:
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=400)
    signed = authority.sign_client(test_ca.cadir, 0xE0, tmp_path, days=30, now=past)
    assert signed.not_after < dt.datetime.now(dt.timezone.utc)
    assert_refused_by_server(handshake(test_ca.server_dir, tmp_path), "expired")


def test_revoked_client_certificate_is_refused(test_ca: SessionCA) -> None:
    account = 0xCA0001  # made up for this test: the CA is shared
    assert handshake(test_ca.server_dir, test_ca.client_dir(account), crl=test_ca.crl).reply == b"pong"
    crl = test_ca.revoke(test_ca.client_serial(account))
    assert_refused_by_server(handshake(test_ca.server_dir, test_ca.client_dir(account), crl=crl), "revoked")
    # the same CRL does not lock anyone else out
    assert handshake(test_ca.server_dir, test_ca.client_dir(1), crl=crl).reply == b"pong"


def test_csr_signed_certificate_works_and_key_stays_put(test_ca: SessionCA, tmp_path: Path) -> None:
    client, issued = tmp_path / "client", tmp_path / "issued"
    csr = authority.make_request(0x0A1, client)
    key_before = (client / "client.key").read_bytes()
    signed = authority.sign_client(test_ca.cadir, 0x0A1, issued, csr=csr)
    assert signed.key is None and not (issued / "client.key").exists()
    (client / "client.crt").write_bytes(signed.cert.read_bytes())
    (client / "ca.crt").write_bytes((issued / "ca.crt").read_bytes())
    out = handshake(test_ca.server_dir, client)
    assert out.reply == b"pong" and out.peer_cn == "BACKUP-000000a1"
    assert (client / "client.key").read_bytes() == key_before


# ---- refusals and files ----

def test_keys_are_0600_and_never_overwritten(tmp_path: Path) -> None:
    cadir = tmp_path / "ca"
    authority.init_ca(cadir)
    authority.sign_server(cadir, "backup.example.com", tmp_path / "srv")
    authority.sign_client(cadir, 7, tmp_path / "cli")
    keys = [cadir / "ca.key", tmp_path / "srv" / "server.key", tmp_path / "cli" / "client.key"]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    before = [k.read_bytes() for k in keys]
    with pytest.raises(PermissionDenied, match="refusing to overwrite existing key .*ca.key"):
        authority.init_ca(cadir)
    with pytest.raises(PermissionDenied, match="server.key"):
        authority.sign_server(cadir, "backup.example.com", tmp_path / "srv")
    with pytest.raises(PermissionDenied, match="client.key"):
        authority.sign_client(cadir, 7, tmp_path / "cli")
    with pytest.raises(PermissionDenied, match="client.key"):
        authority.make_request(7, tmp_path / "cli")
    assert [k.read_bytes() for k in keys] == before
    assert [i.serial for i in authority.list_issued(cadir)] == [1, 2]  # refusals used no serial


def test_csr_for_another_account_is_refused(test_ca: SessionCA, tmp_path: Path) -> None:
    csr = authority.make_request(2, tmp_path / "req")
    serials = [i.serial for i in authority.list_issued(test_ca.cadir)]
    with pytest.raises(PermissionDenied, match="asks for CN BACKUP-00000002, expected BACKUP-00000003"):
        authority.sign_client(test_ca.cadir, 3, tmp_path / "out", csr=csr)
    assert not (tmp_path / "out" / "client.crt").exists()
    assert [i.serial for i in authority.list_issued(test_ca.cadir)] == serials


def test_garbage_csr_is_a_format_error(test_ca: SessionCA, tmp_path: Path) -> None:
    bad = tmp_path / "x.csr"
    bad.write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n")
    with pytest.raises(FormatError, match="x.csr"):
        authority.sign_client(test_ca.cadir, 3, tmp_path / "out", csr=bad)


def test_certificate_may_not_outlive_the_ca(tmp_path: Path) -> None:
    authority.init_ca(tmp_path / "ca", days=100)
    with pytest.raises(UsageError, match="outlive the CA"):
        authority.sign_client(tmp_path / "ca", 1, tmp_path / "c", days=101)
    assert authority.sign_client(tmp_path / "ca", 1, tmp_path / "c", days=99).serial == 1


def test_index_records_issue_and_revocation(tmp_path: Path) -> None:
    cadir = tmp_path / "ca"
    authority.init_ca(cadir)
    authority.sign_server(cadir, "10.0.0.5", tmp_path / "s")
    authority.sign_client(cadir, 0xFFFFFFFF, tmp_path / "c")
    authority.revoke(cadir, 2)
    raw = json.loads((cadir / "issued.json").read_text())
    assert raw["next_serial"] == 3 and raw["crl_number"] == 2
    assert [(e["serial"], e["kind"], e["cn"], e["revoked"] is not None) for e in raw["issued"]] == [
        (1, "server", "10.0.0.5", False), (2, "client", "BACKUP-ffffffff", True)]
    with pytest.raises(NotFound, match="serial 9"):
        authority.revoke(cadir, 9)


def test_corrupt_index_names_the_file(tmp_path: Path) -> None:
    cadir = tmp_path / "ca"
    authority.init_ca(cadir)
    (cadir / "issued.json").write_text('{"format": "boxbox-ca-index", "version": 1, "next_serial": "x"}')
    with pytest.raises(FormatError, match="issued.json"):
        authority.sign_client(cadir, 1, tmp_path / "c")


def test_concurrent_signer_is_told_the_ca_is_busy(tmp_path: Path) -> None:
    cadir = tmp_path / "ca"
    authority.init_ca(cadir)
    with ca_index.locked(cadir):
        with pytest.raises(InUse, match="locked"):
            authority.sign_client(cadir, 1, tmp_path / "c")


# ---- the CLI ----

def test_cli_walkthrough(tmp_path: Path) -> None:
    ca, srv, cli = str(tmp_path / "ca"), str(tmp_path / "srv"), str(tmp_path / "cli")
    run_boxbox("ca", "init", ca)
    run_boxbox("ca", "sign-server", ca, "localhost", "127.0.0.1", "--out", srv)
    run_boxbox("ca", "request", "0a1", "--out", cli)
    out = run_boxbox("ca", "sign-client", ca, "0a1", "--csr", os.path.join(cli, "client.csr"), "--out", cli).stdout
    assert "serial 2: BACKUP-000000a1" in out
    run_boxbox("ca", "revoke", ca, "2")
    listing = run_boxbox("ca", "list", ca).stdout.splitlines()
    server_row = listing[1].split()
    assert server_row[:2] == ["1", "server"] and server_row[3] == "valid"
    assert listing[2].split()[3] == "revoked" and listing[2].endswith("BACKUP-000000a1")
    assert stat.S_IMODE(os.stat(os.path.join(cli, "client.key")).st_mode) == 0o600


@pytest.mark.parametrize("args, code, message", [
    (["ca", "sign-client", "{ca}", "xyz", "--out", "{tmp}/c"], 2, "account number must be 1 to 8 hex digits"),
    (["ca", "sign-client", "{ca}", "123456789", "--out", "{tmp}/c"], 2, "got '123456789'"),
    (["ca", "init", "{ca}"], 1, "refusing to overwrite existing key"),
    (["ca", "sign-client", "{tmp}/nope", "1", "--out", "{tmp}/c"], 1, "not found: CA in"),
    (["ca", "sign-client", "{ca}", "3", "--csr", "{tmp}/req/client.csr", "--out", "{tmp}/c"], 1,
     "expected BACKUP-00000003"),
    (["ca", "revoke", "{ca}", "77"], 1, "not found: serial 77"),
    (["ca", "revoke", "{ca}", "0x4"], 2, "serial must be a decimal number"),
    (["ca", "sign-server", "{ca}", "no such host", "--out", "{tmp}/s"], 2, "DNS host name or an IP address"),
    (["ca", "sign-server", "{ca}", "localhost", "--out", "{tmp}/s", "--days", "0"], 2, "--days must be 1..36525"),
    (["ca", "init", "{tmp}/plain"], 2, "plain exists and is not a directory"),
    (["ca", "init", "{tmp}/plain/ca"], 1, "plain/ca: Not a directory"),
])
def test_cli_mistakes_are_one_line(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    ca = tmp_path / "ca"
    authority.init_ca(ca)
    authority.make_request(2, tmp_path / "req")
    (tmp_path / "plain").write_text("not a directory")
    proc = run_boxbox(*(a.format(ca=ca, tmp=tmp_path) for a in args), exit_code=code)
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("hint: ")]
    assert len(lines) == 1 and lines[0].startswith("boxbox: ") and message in lines[0], proc.stderr
