"""Helpers for the versions, housekeeping and check tests: a store on a temp disc set or an S3 bucket, diff uploads."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from boxbox.crypto.keys import Keys
from boxbox.objects.directory import FILE, make_entry
from boxbox.objects.file import decode_file, encode_blocks, open_index
from boxbox.objects.index import delta_blocks
from boxbox.raidfile import DiscSet
from boxbox.rolling.delta import delta
from boxbox.s3.client import S3Settings
from boxbox.store.account import Store, open_s3
from boxbox.store.accountdb import AccountDatabase
from boxbox.store.lease import LeaseSettings
from boxbox.store.s3backend import S3Store

from tests.test_store_support import attributes, file_object


#: Lease timings for tests: a dead holder's lease is taken over within seconds.
TEST_LEASE = LeaseSettings(duration=6.0, skew=1.0)


def make_store(root: Path, *accounts: tuple[int, int, int], s3: S3Settings | None = None,
               prefix: str = "store") -> Store:
    """A store with (account, soft, hard) accounts on a fresh 3-directory disc set named "0",
    or, given `s3` (a bucket's settings), on that bucket as S3 store "0"."""
    if s3 is None:
        dirs = [root / f"d{i}" for i in range(3)]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        store = Store(AccountDatabase(root / "accounts.db"), {"0": DiscSet("0", dirs, 4096)})
    else:
        root.mkdir(parents=True, exist_ok=True)
        store = Store(AccountDatabase(root / "accounts.db"), {}, {"0": open_s3(S3Store("0", s3, prefix, TEST_LEASE))})
    for account, soft, hard in accounts:
        store.create_account(account, soft, hard, "0")
    return store


def s3_section(s3: S3Settings, secret_dir: Path, name: str = "0", prefix: str = "store",
               lease: LeaseSettings = TEST_LEASE) -> str:
    """A server config's `[s3 NAME]` section for the bucket (its secret key file written, mode 0600)."""
    secret = secret_dir / f"s3-{name}.secret"
    secret.write_text(s3.secret_key + "\n")
    secret.chmod(0o600)
    return (f"\n[s3 {name}]\nendpoint = {s3.endpoint}\nbucket = {s3.bucket}\nprefix = {prefix}\n"
            f"access_key = {s3.access_key}\nsecret_key_file = {secret}\nallow_http = yes\n"
            f"lease_time = {lease.duration:g}s\nclock_skew = {lease.skew:g}s\n")


def upload(client: Any, keys: Keys, dir_id: int, name: bytes, data: bytes) -> int:
    """Store `data` whole as `name` in `dir_id`; returns the new object id."""
    kwargs, obj = file_object(keys, dir_id, name, data)
    return client.store_file(dir_id, source=io.BytesIO(obj), **kwargs)


def diff_object(client: Any, keys: Keys, dir_id: int, name: bytes, base_id: int, data: bytes) -> bytes:
    """What a client sends to store `data` as a diff against object `base_id` (rolling delta on its index)."""
    index = open_index(keys, client.get_block_index(base_id).read(), container_id=dir_id, name=name)
    block_size = index.entries[0].clear_size if index.entries else 4096
    ops = delta(index.signature(), io.BytesIO(data))
    out = io.BytesIO()
    encode_blocks(keys, delta_blocks(index, base_id, ops, block_size), out, container_id=dir_id, name=name,
                  attributes=attributes(), hash_name=index.hash_name, block_size=block_size)
    return out.getvalue()


def upload_diff(client: Any, keys: Keys, dir_id: int, name: bytes, base_id: int, data: bytes) -> int:
    entry = make_entry(keys, dir_id, name, 0, FILE, attributes())
    obj = diff_object(client, keys, dir_id, name, base_id, data)
    return client.store_file(dir_id, source=io.BytesIO(obj), name=entry.sealed_name, mtime=entry.mtime_ns,
                             attributes_hash=entry.attr_hash, attributes=entry.sealed_attributes,
                             diff_from=base_id)


def download(client: Any, keys: Keys, dir_id: int, object_id: int, name: bytes | None = None) -> bytes:
    """Fetch and decode (verify) one version."""
    out = io.BytesIO()
    decode_file(keys, io.BytesIO(client.get_file(dir_id, object_id).read()), out, container_id=dir_id, name=name)
    return out.getvalue()
