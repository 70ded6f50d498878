"""Helpers for store and server tests: a client-side file object maker and an in-process session."""

from __future__ import annotations

import io
import os
import socket
import threading
from pathlib import Path
from typing import Any

from boxbox.crypto.keys import Keys
from boxbox.errors import BoxboxError
from boxbox.objects.attributes import Attributes, FileType
from boxbox.objects.directory import FILE, make_entry
from boxbox.objects.file import encode_file
from boxbox.raidfile import DiscSet
from boxbox.store.account import Store
from boxbox.store.accountdb import AccountDatabase


def make_keys() -> Keys:
    return Keys.from_master(os.urandom(1024))


def attributes(mtime_ns: int = 1_700_000_000_000_000_000, kind: FileType = FileType.REGULAR) -> Attributes:
    return Attributes(kind, 0o644, 1000, 1000, mtime_ns)


def file_object(keys: Keys, dir_id: int, name: bytes, data: bytes) -> tuple[dict[str, Any], bytes]:
    """(StoreFile keyword arguments, the encoded object) for `data` filed as `name` in `dir_id`."""
    attrs = attributes()
    entry = make_entry(keys, dir_id, name, 0, FILE, attrs)
    sink = io.BytesIO()
    encode_file(keys, io.BytesIO(data), sink, container_id=dir_id, name=name, attributes=attrs, size=len(data))
    kwargs = {"name": entry.sealed_name, "mtime": entry.mtime_ns, "attributes_hash": entry.attr_hash,
              "attributes": entry.sealed_attributes}
    return kwargs, sink.getvalue()


def sealed_dir_name(keys: Keys, parent: int, name: bytes) -> bytes:
    return make_entry(keys, parent, name, 0, FILE, None).sealed_name


def raid_store(tmp_path: Path, account: int, soft: int, hard: int, name: str) -> Store:
    """A store on a fresh three-directory disc set (4 KiB blocks) holding one account."""
    dirs = [tmp_path / f"d{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    s = Store(AccountDatabase(tmp_path / "accounts.db"), {"0": DiscSet("0", dirs, 4096)})
    s.create_account(account, soft, hard, "0", name)
    return s


def session_client(store: Any, account: int) -> tuple[Any, threading.Thread]:
    """A Client talking to a real store Session over a socket pair (no TLS), already said hello."""
    from boxbox.store.session import Session
    from boxbox.wire.client import Client
    from boxbox.wire.commands import Dispatcher
    from boxbox.wire.transport import Connection

    a, b = socket.socketpair()

    def serve() -> None:
        session = Session(store, account)
        try:
            Dispatcher(Connection(b, idle_timeout=20, read_timeout=20), session).run()
        except Exception:
            pass
        finally:
            try:
                session.close()
            except BoxboxError:
                pass  # as the real server does (it logs it): e.g. a sync that failed fails again here
            finally:
                b.close()  # as the real server does: the client sees the end, not a 20 s timeout

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client = Client(Connection(a, idle_timeout=20, read_timeout=20))
    client.hello()
    return client, t


def tree_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
