"""Version chains under random edits: every version restores byte-identical, before and after
housekeeping removes random middle versions (patches merged past them)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings, strategies as st

from boxbox.objects.directory import Directory

from tests.serverutil import download, make_store, upload, upload_diff
from tests.test_store_support import make_keys, session_client
from tests.test_versions import _recount_of, _remove_versions_of

KEYS = make_keys()
A = 0x51
VERSIONS = 50

edits = st.lists(st.tuples(st.sampled_from(["insert", "delete", "overwrite", "append", "truncate"]),
                           st.integers(0, 1 << 30), st.integers(1, 6000), st.integers(0, 255)),
                 min_size=VERSIONS - 1, max_size=VERSIONS - 1)


def apply(data: bytes, edit: tuple[str, int, int, int]) -> bytes:
    kind, pos, n, seed = edit
    pos = pos % (len(data) + 1)
    fresh = bytes((seed + i * 7) % 251 for i in range(n)) if n < 64 else bytes([seed]) * 13 + \
        bytes((seed * i) % 253 for i in range(n - 13))
    if kind == "insert":
        return data[:pos] + fresh + data[pos:]
    if kind == "delete":
        return data[:pos] + data[pos + n:]
    if kind == "overwrite":
        return data[:pos] + fresh + data[pos + n:]
    if kind == "append":
        return data + fresh
    return data[:max(1, len(data) - n)]


# Each example uploads and restores 50 versions (~3 s): 3 examples under the ci profile, 100 under deep.
@settings(max_examples=max(3, settings.default.max_examples // 20), deadline=None)
@given(edits=edits, doomed=st.sets(st.integers(1, VERSIONS - 2), max_size=20), seed=st.integers(0, 255))
def test_fifty_versions_restore_identical_before_and_after_housekeeping(edits, doomed, seed):  # type: ignore[no-untyped-def]
    base = bytes((seed * 31 + i * i) % 256 for i in range(30_000))
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp), (A, 1 << 30, 1 << 31))
        c, t = session_client(store, A)
        c.login()
        versions = [base]
        ids = [upload(c, KEYS, 1, b"doc", base)]
        for edit in edits:
            versions.append(apply(versions[-1], edit))
            ids.append(upload_diff(c, KEYS, 1, b"doc", ids[-1], versions[-1]))
        for obj, data in zip(ids, versions):
            assert download(c, KEYS, 1, obj, b"doc") == data
        c.finish()
        t.join(5)
        gone = [ids[k] for k in sorted(doomed)]
        _remove_versions_of(store, A, gone)
        c, t = session_client(store, A)
        c.login(read_only=True)
        assert {e.object_id for e in Directory.parse(c.list_directory(1)).entries} == set(ids) - set(gone)
        for obj, data in zip(ids, versions):
            if obj not in gone:
                assert download(c, KEYS, 1, obj, b"doc") == data
        c.finish()
        t.join(5)
        counts = _recount_of(store, A)
        assert counts == {k: v for k, v in store.read_info(A)._asdict().items() if k in counts}
