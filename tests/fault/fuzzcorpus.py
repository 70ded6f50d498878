"""Recorded real inputs for the mutation fuzzers, and the mutator itself.

The corpus is taken from real work, made once per test session: the plaintext frames of a
real store session (hello, login, directories, uploads, listings, downloads), the objects
it stored, raidfile stripes, and the configs, keys file and state file of a real client run.
"""

from __future__ import annotations

import atexit
import random
import shutil
import socket
import tempfile
import threading
from functools import lru_cache
from pathlib import Path


INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1]


def mutate(rnd: random.Random, data: bytes, others: list[bytes]) -> bytes:
    """One to four random edits: bit flips, interesting integers, inserts, deletes, repeats, splices, cuts."""
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(8)
        n = len(buf)
        if op == 0 and n:
            i = rnd.randrange(n)
            buf[i] ^= 1 << rnd.randrange(8)
        elif op == 1 and n:
            size = rnd.choice((1, 2, 4, 8))
            i = rnd.randrange(max(1, n - size + 1))
            v = rnd.choice(INTERESTING) & ((1 << (8 * size)) - 1)
            buf[i:i + size] = v.to_bytes(size, rnd.choice(("little", "big")))
        elif op == 2:
            i = rnd.randrange(n + 1)
            buf[i:i] = rnd.randbytes(rnd.randrange(1, 64))
        elif op == 3 and n:
            i = rnd.randrange(n)
            del buf[i:i + rnd.randrange(1, 256)]
        elif op == 4 and n:
            i = rnd.randrange(n)
            chunk = buf[i:i + rnd.randrange(1, 128)]
            buf[i:i] = chunk * rnd.randint(1, 8)
        elif op == 5 and others:
            other = rnd.choice(others)
            if other:
                j = rnd.randrange(len(other))
                i = rnd.randrange(n + 1)
                buf[i:] = other[j:j + rnd.randrange(1, 512)] + buf[i:]
        elif op == 6 and n:
            del buf[rnd.randrange(n):]
        elif op == 7 and n:
            i = rnd.randrange(n)
            buf[i:i + 16] = rnd.randbytes(16)
    return bytes(buf)


class Recording:
    """A socket relay that keeps every byte each side sent."""

    def __init__(self) -> None:
        self.to_server = bytearray()
        self.to_client = bytearray()

    def relay(self) -> tuple[socket.socket, socket.socket]:
        """(client end, server end); a thread copies between them, recording."""
        c_app, c_relay = socket.socketpair()
        s_relay, s_app = socket.socketpair()

        def pump(src: socket.socket, dst: socket.socket, log: bytearray) -> None:
            try:
                while data := src.recv(65536):
                    log += data
                    dst.sendall(data)
            except OSError:
                pass
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=pump, args=(c_relay, s_relay, self.to_server), daemon=True).start()
        threading.Thread(target=pump, args=(s_relay, c_relay, self.to_client), daemon=True).start()
        return c_app, s_app


class Corpus:
    def __init__(self, root: Path) -> None:
        from boxbox.crypto.keys import create_keys_file
        from boxbox.objects.attributes import attributes_from_path
        from boxbox.raidfile import DiscSet
        from boxbox.store.account import Store
        from boxbox.store.accountdb import AccountDatabase
        from boxbox.store.session import Session
        from boxbox.wire.client import Client
        from boxbox.wire.commands import Dispatcher
        from boxbox.wire.transport import Connection
        from tests.test_restore_support import Uploader

        self.root = root
        discs = [root / f"d{i}" for i in range(3)]
        for d in discs:
            d.mkdir(parents=True)
        self.store = Store(AccountDatabase(root / "accounts.db"), {"0": DiscSet("0", discs, 4096)})
        self.account = 0x77
        self.store.create_account(self.account, 100_000, 200_000, "0")
        self.keys_path = root / "keys.dat"
        self.keys = create_keys_file(self.keys_path)

        rec = Recording()
        c_sock, s_sock = rec.relay()
        done = threading.Event()

        def serve() -> None:
            session = Session(self.store, self.account)
            try:
                Dispatcher(Connection(s_sock, idle_timeout=20, read_timeout=20), session).run()
            finally:
                session.close()
                s_sock.close()
                done.set()

        threading.Thread(target=serve, daemon=True).start()
        client = Client(Connection(c_sock, idle_timeout=20, read_timeout=20))
        client.hello()
        client.login()
        self.after_login = len(rec.to_server)
        src = root / "src"
        (src / "sub").mkdir(parents=True)
        (src / "a.txt").write_bytes(b"hello world\n" * 300)
        (src / "sub" / "b.bin").write_bytes(random.Random(1).randbytes(20_000))
        (src / "sub" / "empty").write_bytes(b"")
        up = Uploader(client, self.keys)
        top = up.tree(src)
        self.objects: list[bytes] = []
        self.directories: list[bytes] = [client.list_directory(1), client.list_directory(top)]
        listing = client.list_directory(top)
        from boxbox.objects.directory import Directory
        for e in Directory.parse(listing).entries:
            self.objects.append(client.get_object(e.object_id).read())
        client.usage()
        client.finish()
        done.wait(10)
        c_sock.close()
        self.session_to_server = bytes(rec.to_server)
        self.session_to_client = bytes(rec.to_client)
        self.files = [o for o in self.objects if o[:4] == b"BXFO"]
        self.stripes = [p.read_bytes()[:4096] for d in discs for p in sorted(d.rglob("*.rf"))[:6]]
        self.keys_file = self.keys_path.read_bytes()
        self.client_config = (
            "[client]\nserver = localhost\nport = 2201\naccount = 77\ncertificate = /x/c.crt\n"
            "private_key = /x/c.key\nca_certificate = /x/ca.crt\nkeys_file = /x/keys.dat\n"
            "data_directory = /x/data\nautomatic_backup = no\nminimum_file_age = 6h\n"
            "max_upload_rate = 10M\n\n[location home]\npath = /home\n"
            "exclude_dirs = /home/x\nexclude_files_regex = \\.tmp$, ^cache\n")
        self.server_config = (
            "[server]\nlisten = 127.0.0.1\nport = 2201\ncertificate = /x/s.crt\nprivate_key = /x/s.key\n"
            "ca_certificate = /x/ca.crt\naccount_database = /x/accounts.db\nhousekeeping_interval = 15m\n"
            "idle_timeout = 30s\n\n[discset 0]\ndirectories = /a, /b, /c\nblock_size = 4096\n")
        from boxbox.backup import state
        st = state.ClientState(account=self.account, store_marker=12345)
        loc = st.location("home")
        self.state_file = state.encode(st)
        del loc, attributes_from_path


@lru_cache(maxsize=None)
def corpus() -> Corpus:
    root = Path(tempfile.mkdtemp(prefix="boxbox-fuzz-"))
    atexit.register(shutil.rmtree, root, True)
    return Corpus(root)
