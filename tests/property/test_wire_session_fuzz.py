"""Random request sequences against a real store session: only clean errors, never a crash."""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from hypothesis import given, strategies as st

from boxbox.errors import BoxboxError, ProgrammingError
from boxbox.objects.directory import Directory
from boxbox.raidfile import DiscSet
from boxbox.store.account import ROOT_DIRECTORY_ID, Store
from boxbox.store.accountdb import AccountDatabase
from boxbox.wire import messages as m

from tests.test_store_support import file_object, make_keys, sealed_dir_name, session_client

KEYS = make_keys()
CLEAR_NAMES = (b"n0", b"n1", b"n2")
# Mostly ids that exist early in a fresh account, sometimes anything.
ids = st.one_of(st.sampled_from([1, 1, 2, 3, 4, 5]), st.integers(0, 2**64 - 1))
names = st.one_of(st.builds(sealed_dir_name, st.just(KEYS), st.sampled_from([1, 2, 3]), st.sampled_from(CLEAR_NAMES)),
                  st.binary(max_size=48))
attrs = st.one_of(st.just(b""), st.binary(min_size=28, max_size=60), st.binary(max_size=40))
hashes = st.binary(min_size=8, max_size=8)


@lru_cache(maxsize=None)
def real_upload(dir_id: int, name: bytes) -> tuple[m.StoreFile, bytes]:
    """A genuine file object for `name` in `dir_id`, so uploads can succeed."""
    kw, obj = file_object(KEYS, dir_id, name, name * 500)
    return m.StoreFile(dir_id, kw["mtime"], kw["attributes_hash"], 0, kw["name"], kw["attributes"]), obj


UPLOADS = st.one_of(
    st.builds(real_upload, st.sampled_from([1, 2, 3]), st.sampled_from(CLEAR_NAMES)),
    st.tuples(st.builds(m.StoreFile, ids, st.integers(-10, 10), hashes, st.integers(0, 2), names, attrs),
              st.binary(max_size=300)),
)
REQUESTS = st.one_of(
    st.builds(m.CreateDirectory, st.sampled_from([1, 1, 2, 3]), st.integers(-10, 10), names, attrs),
    st.builds(m.ChangeDirAttributes, ids, st.integers(-10, 10), attrs),
    st.builds(m.DeleteDirectory, ids),
    st.builds(m.UndeleteDirectory, ids),
    st.builds(m.ListDirectory, ids, st.integers(0, 15), st.integers(0, 15), st.integers(0, 1)),
    st.builds(m.GetFile, ids, ids),
    st.builds(m.GetObject, ids),
    st.builds(m.GetBlockIndexByID, ids),
    st.builds(m.GetBlockIndexByName, ids, names),
    st.builds(m.DeleteFile, ids, names),
    st.builds(m.UndeleteFile, ids, ids),
    st.builds(m.MoveObject, ids, ids, ids, st.integers(0, 3), hashes, names, attrs, attrs),
    st.builds(m.GetObjectName, ids, ids),
    st.builds(m.SetClientStoreMarker, st.integers(0, 2**64 - 1)),
    st.builds(m.GetAccountUsage),
    st.builds(m.KeepAlive),
)
STEPS = st.one_of(REQUESTS.map(lambda r: (r, None)), UPLOADS)
DOWNLOADS = (m.ListDirectory, m.GetFile, m.GetObject, m.GetBlockIndexByID, m.GetBlockIndexByName)


@given(requests=st.lists(STEPS, min_size=1, max_size=30))
def test_random_requests_get_clean_answers_and_leave_the_account_readable(requests: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dirs = [root / f"d{i}" for i in range(3)]
        for d in dirs:
            d.mkdir()
        store = Store(AccountDatabase(root / "accounts.db"), {"0": DiscSet("0", dirs, 4096)})
        store.create_account(7, 1000, 2000, "0")
        client, thread = session_client(store, 7)
        client.login()
        pendings = []
        for request, upload in requests:
            pendings.append(client.submit(request, upload=None if upload is None else [upload],
                                          download=isinstance(request, DOWNLOADS)))
        for p in pendings:
            try:
                value = p.result()
                if p.download:
                    value[1].read()
            except ProgrammingError as e:
                raise AssertionError(f"server crashed on a request: {e}") from e
            except BoxboxError:
                pass
        client.finish()
        thread.join(5)
        info = store.read_info(7)
        acct = store.open(7, write=False)
        root_dir = Directory.parse(acct.read_object(ROOT_DIRECTORY_ID))
        assert root_dir.object_id == ROOT_DIRECTORY_ID
        assert info.blocks_used >= info.blocks_directories > 0
