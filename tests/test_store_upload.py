"""StoreFile's receive paths: an upload up to WHOLE_UPLOAD is parsed in memory, a bigger one as it streams."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from boxbox.errors import FormatError
from boxbox.objects.directory import Directory
from boxbox.store import session as store_session
from boxbox.store.account import Store

from tests.test_store_support import file_object, make_keys, raid_store, session_client

A = 0x2B


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return raid_store(tmp_path, A, 100_000, 200_000, "bob")


@pytest.mark.parametrize("size", [0, 5_000, 3 << 20], ids=["empty", "whole", "streamed"])
def test_an_upload_is_stored_as_sent_whichever_way_it_is_received(store: Store, size: int) -> None:
    kw, obj = file_object(make_keys(), 1, b"f", os.urandom(size))
    assert (len(obj) > store_session.WHOLE_UPLOAD) == (size > store_session.WHOLE_UPLOAD)
    client, t = session_client(store, A)
    client.login()
    new_id = client.store_file(1, source=io.BytesIO(obj), **kw)
    assert client.get_object(new_id).read() == obj
    client.finish()
    t.join(5)


@pytest.mark.parametrize("size", [5_000, 3 << 20], ids=["whole", "streamed"])
def test_data_after_the_footer_is_refused_and_nothing_is_listed(store: Store, size: int) -> None:
    keys = make_keys()
    kw, obj = file_object(keys, 1, b"f", os.urandom(size))
    client, t = session_client(store, A)
    client.login()
    with pytest.raises(FormatError, match="after the file object footer"):
        client.store_file(1, source=[obj, b"extra"], **kw)
    kw2, obj2 = file_object(keys, 1, b"g", b"next")  # the connection is still in step
    kept = client.store_file(1, source=io.BytesIO(obj2), **kw2)
    assert [e.object_id for e in Directory.parse(client.list_directory(1)).entries] == [kept]
    client.finish()
    t.join(5)



def test_a_new_id_skips_objects_left_beyond_the_last_id_and_takes_what_recovery_clears(
        store: Store, tmp_path: Path) -> None:
    """allocate_id lists a shard directory once per session: an object there beyond the info's last id
    (committed, or a dead writer's complete temps) is skipped, never overwritten; a lone temp is not an object."""
    from boxbox.store.account import object_key
    from boxbox.store.backend import ROOT

    acct = store.open(A, write=True)
    last = acct.info.last_object_id
    backend = acct.backend
    for object_id in (last + 1, last + 3):
        put = backend.put(object_key(A, object_id))
        put.write(b"left over %d" % object_id)
        put.commit()
    lone = tmp_path / "d0" / f"{ROOT}/{object_key(A, last + 2)}.rfw"  # a dead writer's temp, nothing else
    lone.write_bytes(b"partial")
    assert [acct.allocate_id() for _ in range(3)] == [last + 2, last + 4, last + 5]
    assert acct.read_object(last + 1) == b"left over %d" % (last + 1)
    assert acct.read_object(last + 3) == b"left over %d" % (last + 3)
    assert not lone.exists()  # settled by the check of its id
    acct.close()
