"""TLS contexts: both ways verified, host name checked by the client, CRL honoured by the server."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from boxbox.ca import authority
from boxbox.errors import ConfigError, PermissionDenied
from boxbox.wire import messages as m
from boxbox.wire import tls
from boxbox.wire.client import Client
from boxbox.wire.commands import NONE, Command, Dispatcher, command
from boxbox.wire.transport import Connection


class _Session:
    access = NONE


def _table() -> dict[type, Command]:
    table: dict[type, Command] = {}

    @command(m.KeepAlive, access=NONE, table=table)
    def alive(session: Any, req: Any, stream: Any) -> m.Success:
        return m.Success(session.account)

    return table


class TinyServer:
    """One-connection-at-a-time TLS server on 127.0.0.1 that records what happened."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.outcomes: list[str] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            try:
                sock = self.ctx.wrap_socket(raw, server_side=True)
                session = _Session()
                session.account = tls.peer_account(sock)  # type: ignore[attr-defined]
                Dispatcher(Connection(sock, idle_timeout=5, read_timeout=5), session, _table()).run()
                self.outcomes.append("ok")
            except Exception as e:  # noqa: BLE001 - the test inspects it
                self.outcomes.append(f"refused: {e}")
                raw.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def server(test_ca: Any) -> Any:
    d = test_ca.server_dir
    srv = TinyServer(tls.server_context(d / "server.crt", d / "server.key", test_ca.ca_cert, test_ca.crl))
    yield srv
    srv.close()


def _client_ctx(d: Path) -> ssl.SSLContext:
    return tls.client_context(d / "client.crt", d / "client.key", d / "ca.crt")


def test_good_client_gets_account_from_certificate(server: TinyServer, test_ca: Any) -> None:
    with Client.connect("127.0.0.1", server.port, _client_ctx(test_ca.client_dir(0x61)),
                        server_hostname="localhost", timeout=10) as client:
        assert client.call(m.KeepAlive()).object_id == 0x61
        assert client.server_software.startswith("boxbox")


def test_client_checks_the_host_name(server: TinyServer, test_ca: Any) -> None:
    with pytest.raises(PermissionDenied, match="certificate verification"):
        Client.connect("127.0.0.1", server.port, _client_ctx(test_ca.client_dir(0x61)),
                       server_hostname="backup.example.net", timeout=10)


def test_certificate_from_another_ca_is_refused(server: TinyServer, test_ca: Any, tmp_path: Path) -> None:
    authority.init_ca(tmp_path / "ca2")
    authority.sign_client(tmp_path / "ca2", 0x62, tmp_path / "c")
    ctx = tls.client_context(tmp_path / "c" / "client.crt", tmp_path / "c" / "client.key", test_ca.ca_cert)
    with pytest.raises(PermissionDenied):
        Client.connect("127.0.0.1", server.port, ctx, server_hostname="localhost", timeout=10)


def test_expired_certificate_is_refused(server: TinyServer, test_ca: Any, tmp_path: Path) -> None:
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    authority.sign_client(test_ca.cadir, 0x63, tmp_path / "old", days=1, now=past)
    with pytest.raises(PermissionDenied):
        Client.connect("127.0.0.1", server.port, _client_ctx(tmp_path / "old"), server_hostname="localhost",
                       timeout=10)


def test_revoked_certificate_is_refused_after_reload(test_ca: Any) -> None:
    d = test_ca.server_dir
    client_dir = test_ca.client_dir(0x64)
    test_ca.revoke(test_ca.client_serial(0x64))
    srv = TinyServer(tls.server_context(d / "server.crt", d / "server.key", test_ca.ca_cert, test_ca.crl))
    try:
        with pytest.raises(PermissionDenied, match="certificate revoked|refused this client's certificate"):
            Client.connect("127.0.0.1", srv.port, _client_ctx(client_dir), server_hostname="localhost", timeout=10)
        for _ in range(100):
            if srv.outcomes:
                break
            time.sleep(0.02)
        assert "revoked" in srv.outcomes[0].lower()
        with Client.connect("127.0.0.1", srv.port, _client_ctx(test_ca.client_dir(0x65)),
                            server_hostname="localhost", timeout=10) as ok:  # others still get in
            assert ok.call(m.KeepAlive()).object_id == 0x65
    finally:
        srv.close()


def test_missing_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        tls.server_context(tmp_path / "no.crt", tmp_path / "no.key", tmp_path / "ca.crt")
