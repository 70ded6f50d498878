"""A fault-injecting HTTP forwarder on 127.0.0.1 between the S3 client and SeaweedFS.

Requests are forwarded byte for byte (the Host header too, so SigV4 still verifies); a
rule can instead answer 500 or 503 SlowDown, reset the connection before or after
forwarding, cut the body short (with Content-Length or chunked), reset mid-body, delay,
or flip a byte of the response or of the request body. Each rule fires `times` times on
requests matching its method and path fragment.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: faults that answer without forwarding (when="before") or after forwarding ("after")
FAULTS = ("500", "503", "reset", "reset_mid_body", "truncate", "truncate_chunked", "delay", "corrupt",
          "corrupt_request")

_ERROR_XML = {
    "500": (500, "Internal Server Error", b"<Error><Code>InternalError</Code>"
                                          b"<Message>injected</Message></Error>"),
    "503": (503, "Slow Down", b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate."
                              b"</Message></Error>"),
}


@dataclass
class Rule:
    fault: str
    method: str | None = None
    #: fires only if the request target (encoded path and query) contains this
    path: str | None = None
    times: int = 1
    #: "before": the request never reaches S3; "after": it does, and its answer is lost
    when: str = "before"
    delay: float = 0.0
    #: runs when the rule fires, before the fault (e.g. a competing write)
    action: Callable[[], None] | None = None
    hits: int = 0

    def __post_init__(self) -> None:
        if self.fault not in FAULTS or self.when not in ("before", "after"):
            raise ValueError(f"bad rule {self}")

    def matches(self, method: str, target: str) -> bool:
        return (self.hits < self.times and (self.method is None or self.method == method)
                and (self.path is None or self.path in target))


@dataclass
class FaultProxy:
    """Start with `start()`; `.endpoint` is what the client should use."""

    upstream_port: int
    #: serve https with this context (the upstream stays plain http)
    tls: ssl.SSLContext | None = None
    rules: list[Rule] = field(default_factory=list)
    #: (method, target, fault or "") for every request seen
    log: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy._sockets.add(self.connection)

            def finish(self) -> None:
                with proxy._lock:
                    proxy._sockets.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def log_message(self, format: str, *args: object) -> None:
                pass

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except OSError:
                    self.close_connection = True

            def __getattr__(self, name: str):  # noqa: ANN204
                if name.startswith("do_"):
                    return lambda: proxy._handle(self)
                raise AttributeError(name)

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 64  # (5 by default) the read-ahead's fetcher opens 16 connections at once

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
            self.endpoint = f"https://localhost:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.drop_connections()

    def add(self, fault: str, **kwargs: object) -> Rule:
        rule = Rule(fault, **kwargs)  # type: ignore[arg-type]
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.log.clear()

    def faults(self) -> list[str]:
        return [f for _, _, f in self.log if f]

    def drop_connections(self) -> None:
        """Close every client connection, as a server dropping idle keep-alives does."""
        with self._lock:
            socks = list(self._sockets)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _rule_for(self, method: str, target: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, target):
                    rule.hits += 1
                    self.log.append((method, target, rule.fault))
                    return rule
            self.log.append((method, target, ""))
        return None

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        method, target = h.command, h.path
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        rule = self._rule_for(method, target)
        if rule is not None and rule.action is not None:
            rule.action()
        fault = rule.fault if rule else ""
        if fault == "delay":
            time.sleep(rule.delay)  # type: ignore[union-attr]
        if fault in ("500", "503", "reset") and rule is not None and rule.when == "before":
            return self._fail(h, fault)
        if fault == "corrupt_request" and body:
            body = body[:-1] + bytes([body[-1] ^ 1])
        status, reason, headers, data = self._forward(method, target, h, body)
        if fault in ("500", "503", "reset"):
            return self._fail(h, fault)
        if fault == "corrupt" and data:
            data = data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:]
        chunked = fault == "truncate_chunked"
        h.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection") or (
                    method == "HEAD" and name.lower() == "content-length"):
                h.send_header(name, value)
        if chunked:
            h.send_header("Transfer-Encoding", "chunked")
        elif method != "HEAD":
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if method == "HEAD":
            return
        if fault in ("truncate", "reset_mid_body", "truncate_chunked"):
            half = data[:max(1, len(data) // 2)] if data else b""
            h.wfile.write(b"%x\r\n%s\r\n" % (len(half), half) if chunked else half)
            h.wfile.flush()
            return self._fail(h, "reset" if fault == "reset_mid_body" else "close")
        h.wfile.write(data)

    def _forward(self, method: str, target: str, h: http.server.BaseHTTPRequestHandler,
                 body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        up = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            up.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in h.headers.items():
                if name.lower() != "connection":
                    up.putheader(name, value)
            up.endheaders(body or None)
            resp = up.getresponse()
            return resp.status, resp.reason, resp.getheaders(), resp.read()
        finally:
            up.close()

    @staticmethod
    def _fail(h: http.server.BaseHTTPRequestHandler, fault: str) -> None:
        if fault in _ERROR_XML:
            status, reason, xml = _ERROR_XML[fault]
            h.send_response_only(status, reason)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(xml)))
            h.end_headers()
            h.wfile.write(xml)
            return
        h.close_connection = True
        if fault == "reset":  # RST, not FIN: linger 0
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.wfile.flush()
        h.connection.close()
