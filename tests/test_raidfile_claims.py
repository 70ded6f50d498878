"""raidfile claims: a change that fails part way lets go of every lock it took, in this process too."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from boxbox.raidfile import DiscSet

from tests.test_raidfile import make_set, read, temps_left, write


def _failing_replace(monkeypatch: pytest.MonkeyPatch, fail_from: int) -> list[int]:
    """os.replace raises EIO from its `fail_from`-th call on (the clean-up's renames fail too)."""
    real, calls = os.replace, [0]

    def replace(src: str, dst: str) -> None:
        calls[0] += 1
        if calls[0] > fail_from:
            raise OSError(errno.EIO, "injected", src)
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.mark.parametrize("fail_from", [0, 1, 2])
def test_failed_delete_leaves_no_claim_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_from: int) -> None:
    ds = make_set(tmp_path)
    write(ds, "a/f", b"x" * 1000)
    _failing_replace(monkeypatch, fail_from)
    with pytest.raises(OSError):
        ds.delete("a/f")
    monkeypatch.undo()
    assert read(ds, "a/f") == b"x" * 1000  # whole: rolled back, or put back by recovery
    ds.delete("a/f")  # not "being moved by another process"
    assert not ds.exists("a/f") and not temps_left(ds)


@pytest.mark.parametrize("fail_from", [0, 1, 3, 4])
def test_failed_rename_leaves_no_claim_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_from: int) -> None:
    ds = make_set(tmp_path)
    write(ds, "a/src", b"s" * 1000)
    _failing_replace(monkeypatch, fail_from)
    with pytest.raises(OSError):
        ds.rename("a/src", "a/dst")
    monkeypatch.undo()
    names = [p for p in ("a/src", "a/dst") if ds.exists(p)]
    assert b"s" * 1000 in {read(ds, p) for p in names if ds.check(p).readable}
    for p in names:
        ds.delete(p)  # not "being moved by another process"
    assert not temps_left(ds)


def test_claims_held_by_a_failed_write_are_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds: DiscSet = make_set(tmp_path)
    write(ds, "a/f", b"old" * 100)
    _failing_replace(monkeypatch, 0)
    with pytest.raises(OSError):
        write(ds, "a/f", b"new" * 100)
    monkeypatch.undo()
    assert read(ds, "a/f") == b"old" * 100
    write(ds, "a/f", b"new" * 100)
    ds.delete("a/f")
    assert not temps_left(ds)


@pytest.mark.parametrize("fail_from", [1, 2])
def test_failed_rename_to_a_new_name_leaves_no_unreadable_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                fail_from: int) -> None:
    """Before the commit point (the 2nd rename) a new `dst` is taken back; from it on, `dst` is whole.
    Either way every name left is readable, and `src` still holds the data."""
    ds = make_set(tmp_path)
    write(ds, "a/src", b"s" * 10_000)
    _failing_replace(monkeypatch, fail_from)
    with pytest.raises(OSError):
        ds.rename("a/src", "a/dst")
    monkeypatch.undo()
    assert read(ds, "a/src") == b"s" * 10_000
    assert ds.exists("a/dst") == (fail_from >= 2)
    if ds.exists("a/dst"):
        assert read(ds, "a/dst") == b"s" * 10_000
