"""The syscalls a new small raidfile costs: its headers go out with its data, its directories are made once.

The bytes on disc are the format's (every stripe verifies, the content reads back); these tests pin what
each file no longer pays for (a store creates one per upload): an lseek and a header pwrite per data
stripe, three stats of its directories.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest

from boxbox.raidfile import DiscSet


def make_set(tmp_path: Path, count: int = 3) -> DiscSet:
    dirs = [tmp_path / f"d{i}" for i in range(count)]
    for d in dirs:
        d.mkdir()
    return DiscSet("t", dirs, 64)


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts of the os calls a write might make, counted while they run as before."""
    seen: Counter[str] = Counter()

    def counting(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            seen[name] += 1
            return real(*args, **kwargs)
        return call

    for name in ("lseek", "pwrite", "writev", "pwritev"):
        monkeypatch.setattr(os, name, counting(name, getattr(os, name)))
    monkeypatch.setattr(os.path, "isdir", counting("isdir", os.path.isdir))
    return seen


@pytest.mark.parametrize("size", [0, 1, 63, 64, 200, 5000], ids=lambda n: f"{n}B")
@pytest.mark.parametrize("discs", [3, 1], ids=["raid", "whole"])
def test_a_small_file_goes_out_in_one_write_per_data_stripe(tmp_path: Path, calls: Counter[str], size: int,
                                                             discs: int) -> None:
    ds = make_set(tmp_path, discs)
    data = os.urandom(size)
    with ds.create("a/f") as w:
        w.write(data)
    data_stripes = (2 if size > 64 else 1) if discs == 3 else 1  # stripe 2 holds nothing below one row
    assert calls["lseek"] == 0
    assert calls["writev"] == (data_stripes if size else 0)  # the header rides with the records
    assert calls["pwrite"] == (3 if discs == 3 else 1) - calls["writev"]  # parity's, or an empty stripe's
    assert ds.open("a/f").read() == data
    report = ds.check("a/f")
    assert report.ok, str(report)


def test_a_big_file_still_writes_its_rows_as_they_come(tmp_path: Path, calls: Counter[str]) -> None:
    ds = make_set(tmp_path)
    data = os.urandom(5 << 20)
    with ds.create("a/big") as w:
        for o in range(0, len(data), 1 << 16):
            w.write(data[o : o + (1 << 16)])
    assert calls["lseek"] == 2  # once per data stripe, at its first rows; parity is written at offsets
    assert ds.open("a/big").read() == data
    assert ds.check("a/big").ok


def test_directories_are_made_once_and_again_if_removed(tmp_path: Path, calls: Counter[str]) -> None:
    ds = make_set(tmp_path)
    with ds.create("a/b/one") as w:
        w.write(b"1")
    made = calls["isdir"]
    with ds.create("a/b/two") as w:
        w.write(b"2")
    assert calls["isdir"] == made  # known: no stat of the three directories
    ds.delete("a/b/one")
    ds.delete("a/b/two")
    for i in range(3):
        shutil.rmtree(tmp_path / f"d{i}" / "a")  # removed behind the set's back
    with ds.create("a/b/three") as w:
        w.write(b"3")
    assert ds.open("a/b/three").read() == b"3"
    assert ds.listdir("a/b") == ["three"]
