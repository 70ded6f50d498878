"""End to end: a real `boxbox server` subprocess on 127.0.0.1 with two accounts, over TLS."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from boxbox.ca import authority
from boxbox.errors import InUse, LimitExceeded, NotFound, PermissionDenied
from boxbox.objects.directory import DELETED, FILE, Directory
from boxbox.wire import messages as m, tls
from boxbox.wire.client import Client

from tests.conftest import ROOT, boxbox_command, boxbox_env, free_port, run_boxbox, wait_listening
from tests.test_store_support import file_object, make_keys, sealed_dir_name

pytestmark = pytest.mark.e2e

A, B = 0xA1, 0xB2
ROOT_DIR = 1


class RunningServer:
    def __init__(self, tmp: Path, test_ca: Any) -> None:
        self.tmp = tmp
        self.ca = test_ca
        self.port = free_port()
        self.config = tmp / "server.conf"
        self.discs = [tmp / f"disc{i}" for i in range(3)]
        for d in self.discs:
            d.mkdir()
        self.pid_file = tmp / "server.pid"
        self.log = tmp / "server.log"
        sd = test_ca.server_dir
        self.config.write_text(textwrap.dedent(f"""\
            [server]
            listen = 127.0.0.1
            port = {self.port}
            certificate = {sd / 'server.crt'}
            private_key = {sd / 'server.key'}
            ca_certificate = {test_ca.ca_cert}
            crl = {test_ca.crl}
            account_database = {tmp / 'accounts.db'}
            pid_file = {self.pid_file}
            idle_timeout = 30s
            read_timeout = 5s
            log_level = info

            [discset 0]
            directories = {', '.join(str(d) for d in self.discs)}
            """))
        self.proc: subprocess.Popen[bytes] | None = None

    def accounts(self, *args: str, exit_code: int = 0) -> subprocess.CompletedProcess[str]:
        return run_boxbox("accounts", "--config", str(self.config), *args, exit_code=exit_code)

    def start(self) -> None:
        args = [*boxbox_command(), "server", "--config", str(self.config), "--foreground"]
        if os.geteuid() == 0:
            args.append("--allow-root")
        self.proc = subprocess.Popen(args, env=boxbox_env(), stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "wb"))
        wait_listening(self.proc, self.port, self.log)

    def stop(self) -> int:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(20)

    def context(self, account: int) -> ssl.SSLContext:
        d = self.ca.client_dir(account)
        return tls.client_context(d / "client.crt", d / "client.key", d / "ca.crt")

    def client(self, account: int, hostname: str = "localhost", read_only: bool = False, login: bool = True) -> Client:
        c = Client.connect("127.0.0.1", self.port, self.context(account), server_hostname=hostname, timeout=15)
        if login:
            c.login(read_only=read_only)
        return c

    def disc_files(self) -> set[str]:
        return {str(p.relative_to(self.tmp)) for d in self.discs for p in d.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, test_ca: Any) -> Iterator[RunningServer]:
    srv = RunningServer(tmp_path_factory.mktemp("server"), test_ca)
    srv.accounts("create", f"{A:x}", "--soft", "50M", "--hard", "60M", "--name", "alice")
    srv.start()
    srv.accounts("create", f"{B:x}", "--soft", "50M", "--hard", "60M")  # while it runs
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.stop()


def test_pid_file_and_session_log(server: RunningServer) -> None:
    assert int(server.pid_file.read_text()) == server.proc.pid  # type: ignore[union-attr]
    with server.client(A) as c:
        c.usage()
    time.sleep(0.2)
    assert f"session account {A:08x}" in server.log.read_text()


def test_full_command_coverage_over_tls(server: RunningServer) -> None:
    keys = make_keys()
    with server.client(A) as c:
        sub = c.create_directory(ROOT_DIR, sealed_dir_name(keys, ROOT_DIR, b"photos"))
        kwargs, obj = file_object(keys, sub, b"cat.jpg", os.urandom(300_000))
        fid = c.store_file(sub, source=io.BytesIO(obj), **kwargs)
        assert c.get_file(sub, fid).read() == obj
        assert c.get_object(fid).read() == obj
        assert c.get_block_index(fid).read() == c.get_block_index_by_name(sub, kwargs["name"])[1].read()
        [entry] = Directory.parse(c.list_directory(sub)).entries
        assert (entry.object_id, entry.flags) == (fid, FILE)
        other = c.create_directory(ROOT_DIR, sealed_dir_name(keys, ROOT_DIR, b"other"))
        c.move_object(fid, sub, other, sealed_dir_name(keys, other, b"dog.jpg"))
        assert len(c.get_object_name(fid, other).names) == 2
        c.delete_file(other, sealed_dir_name(keys, other, b"dog.jpg"))
        assert Directory.parse(c.list_directory(other)).entry(fid).flags == FILE | DELETED
        c.undelete_file(other, fid)
        c.delete_directory(sub)
        c.undelete_directory(sub)
        c.change_dir_attributes(sub, bytes(40))
        c.set_client_store_marker(77)
        c.keep_alive().result()
        usage = c.usage()
        assert usage.blocks_current >= 300_000 // 4096 and usage.name == "alice"
    with server.client(A, read_only=True) as c:
        assert c.get_object(fid).read() == obj
    info = json.loads(server.accounts("info", f"{A:x}", "--json").stdout)
    assert info["client_store_marker"] == 77 and info["count_current"] >= 1


def test_accounts_are_isolated(server: RunningServer) -> None:
    keys = make_keys()
    a_last = json.loads(server.accounts("info", f"{A:x}", "--json").stdout)["last_object_id"]
    with server.client(B) as b:
        # Ids are per account: push B's ids past every id A has, so "B's id" names nothing in A.
        fillers = [b.submit(m.CreateDirectory(ROOT_DIR, 0, sealed_dir_name(keys, ROOT_DIR, b"f%d" % i), b""))
                   for i in range(a_last + 5)]
        assert fillers[-1].result().object_id > a_last
        kwargs, obj = file_object(keys, ROOT_DIR, b"b-secret", b"only for bob")
        bfile = b.store_file(ROOT_DIR, source=io.BytesIO(obj), **kwargs)
        bdir = b.create_directory(ROOT_DIR, sealed_dir_name(keys, ROOT_DIR, b"bdir"))
    with server.client(A) as a:
        for attempt in (lambda: a.get_object(bfile), lambda: a.list_directory(bdir),
                        lambda: a.get_file(ROOT_DIR, bfile), lambda: a.delete_directory(bdir),
                        lambda: a.move_object(bfile, ROOT_DIR, ROOT_DIR, kwargs["name"]),
                        lambda: a.delete_file(ROOT_DIR, kwargs["name"]), lambda: a.get_block_index(bfile)):
            with pytest.raises(NotFound):
                attempt()
    with server.client(B, read_only=True) as b:
        assert b.get_object(bfile).read() == obj


def test_refused_certificates(server: RunningServer, test_ca: Any, tmp_path: Path) -> None:
    authority.init_ca(tmp_path / "ca2")
    authority.sign_client(tmp_path / "ca2", A, tmp_path / "foreign")
    foreign = tls.client_context(tmp_path / "foreign" / "client.crt", tmp_path / "foreign" / "client.key",
                                 test_ca.ca_cert)
    with pytest.raises(PermissionDenied):
        Client.connect("127.0.0.1", server.port, foreign, server_hostname="localhost", timeout=10)

    import datetime as dt
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    authority.sign_client(test_ca.cadir, A, tmp_path / "expired", days=1, now=past)
    expired = tls.client_context(tmp_path / "expired" / "client.crt", tmp_path / "expired" / "client.key",
                                 test_ca.ca_cert)
    with pytest.raises(PermissionDenied):
        Client.connect("127.0.0.1", server.port, expired, server_hostname="localhost", timeout=10)

    with pytest.raises(PermissionDenied, match="does not exist on this server"):
        server.client(0xC3)  # valid certificate, unknown account

    server.accounts("disable", f"{A:x}")
    try:
        with pytest.raises(PermissionDenied, match="disabled"):
            server.client(A)
    finally:
        server.accounts("enable", f"{A:x}")
    server.client(A).finish()

    with pytest.raises(PermissionDenied, match="certificate verification"):
        server.client(A, hostname="backup.example.net")


def test_revoked_certificate_refused_after_sighup(server: RunningServer, test_ca: Any) -> None:
    server.accounts("create", "d4", "--soft", "1M", "--hard", "2M")
    server.client(0xD4).finish()
    test_ca.revoke(test_ca.client_serial(0xD4))
    os.kill(server.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
    time.sleep(0.5)
    with pytest.raises(PermissionDenied):
        server.client(0xD4)
    server.client(A).finish()  # others unaffected


def test_one_writer_per_account(server: RunningServer) -> None:
    first = server.client(A)
    with pytest.raises(InUse, match="in use by another client"):
        server.client(A)
    reader = server.client(A, read_only=True)
    reader.usage()
    first.finish()
    server.client(A).finish()
    reader.finish()


def test_hard_limit_refuses_upload_and_keeps_usage(server: RunningServer) -> None:
    keys = make_keys()
    server.accounts("create", "e5", "--soft", "100k", "--hard", "200k")
    with server.client(0xE5) as c:
        before = c.usage()
        files_before = server.disc_files()
        kwargs, obj = file_object(keys, ROOT_DIR, b"big", os.urandom(400_000))
        with pytest.raises(LimitExceeded):
            c.store_file(ROOT_DIR, source=io.BytesIO(obj), **kwargs)
        assert c.usage() == before
        small_kwargs, small = file_object(keys, ROOT_DIR, b"small", b"fits")
        c.store_file(ROOT_DIR, source=io.BytesIO(small), **small_kwargs)
    new_objects = {f for f in server.disc_files() - files_before if "/o/" in f}
    assert 1 <= len(new_objects) <= 3  # the small file only (one stripe file per disc)


CLIENT_SCRIPT = """
import io, sys, time
from pathlib import Path
from boxbox.wire import tls, messages as m
from boxbox.wire.client import Client
d = Path(sys.argv[2])
ctx = tls.client_context(d / "client.crt", d / "client.key", d / "ca.crt")
c = Client.connect("127.0.0.1", int(sys.argv[1]), ctx, server_hostname="localhost")
c.login()
def slow():
    yield open(sys.argv[3], "rb").read()[:2 << 20]
    c.flush()
    print("uploading", flush=True)
    time.sleep(60)
c.submit(m.StoreFile(1, 0, bytes(8), 0, bytes(32), b""), upload=slow())
"""


def test_client_killed_mid_upload_leaves_nothing(server: RunningServer, tmp_path: Path) -> None:
    keys = make_keys()
    _, obj = file_object(keys, ROOT_DIR, b"huge", os.urandom(3 << 20))
    (tmp_path / "obj").write_bytes(obj)
    with server.client(A, read_only=True) as c:
        before = c.usage()
    files_before = server.disc_files()
    proc = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, str(server.port), str(server.ca.client_dir(A)),
                             str(tmp_path / "obj")], stdout=subprocess.PIPE, env=boxbox_env(), cwd=ROOT)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"uploading"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while True:  # the server notices the dead connection and releases the lock
        try:
            c = server.client(A)
            break
        except InUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert c.usage().blocks_used == before.blocks_used
    c.finish()
    leftovers = {f for f in server.disc_files() - files_before if "/o/" in f or f.endswith(".rfw")}
    assert leftovers == set()


def test_garbage_silence_and_many_dropped_connections(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(os.urandom(5000))
    silent = socket.create_connection(("127.0.0.1", server.port))  # TLS client that sends nothing
    for _ in range(200):
        socket.create_connection(("127.0.0.1", server.port)).close()
    with server.client(A) as c:
        assert c.usage().blocks_used > 0
    silent.close()


def test_accounts_cli(server: RunningServer) -> None:
    out = server.accounts("list").stdout
    assert f"{A:08x}" in out and f"{B:08x}" in out
    server.accounts("setlimit", f"{B:x}", "--soft", "1G", "--hard", "2G")
    info = json.loads(server.accounts("info", f"{B:x}", "--json").stdout)
    assert (info["soft_limit"], info["hard_limit"]) == ((1 << 30) // 4096, (2 << 30) // 4096)
    server.accounts("name", f"{B:x}", "bob")
    assert "bob" in server.accounts("info", f"{B:x}").stdout
    err = server.accounts("setlimit", f"{B:x}", "--soft", "3G", exit_code=2).stderr
    assert "above the hard limit" in err
    server.accounts("create", "f6", "--soft", "2G", "--hard", "1G", exit_code=2)
    server.accounts("create", "f6", "--soft", "1M", "--hard", "2M")
    server.accounts("delete", "f6", exit_code=2)
    server.accounts("delete", "f6", "--yes")
    server.accounts("info", "f6", exit_code=1)


def test_refuses_root_and_sigterm_aborts_uploads_cleanly(server: RunningServer, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        err = run_boxbox("server", "--config", str(server.config), "--foreground", exit_code=1).stderr
        assert "refusing to run the server as root" in err
    _, obj = file_object(make_keys(), ROOT_DIR, b"huge", os.urandom(3 << 20))
    (tmp_path / "obj").write_bytes(obj)
    files_before = server.disc_files()
    uploader = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, str(server.port),
                                 str(server.ca.client_dir(A)), str(tmp_path / "obj")],
                                stdout=subprocess.PIPE, env=boxbox_env(), cwd=ROOT)
    try:
        assert uploader.stdout is not None and uploader.stdout.readline().strip() == b"uploading"
        assert server.stop() == 0  # mid-upload
    finally:
        uploader.kill()
        uploader.wait()
    assert not server.pid_file.exists()
    assert "stopped" in server.log.read_text()
    assert {f for f in server.disc_files() - files_before if "/o/" in f or f.endswith(".rfw")} == set()
