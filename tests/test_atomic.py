"""The atomic writer: old content survives exceptions and SIGKILL; never a mix."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boxbox.atomic import AtomicWriter, create_exclusive, write_atomic
from tests.conftest import boxbox_env


def test_write_and_mode(tmp_path: Path) -> None:
    p = tmp_path / "f"
    write_atomic(p, b"hello", mode=0o640)
    assert p.read_bytes() == b"hello"
    assert p.stat().st_mode & 0o777 == 0o640


def test_exception_keeps_old_content_and_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "f"
    write_atomic(p, b"old")
    with pytest.raises(RuntimeError):
        with AtomicWriter(p) as f:
            f.write(b"new but incomplete")
            raise RuntimeError("disk on fire")
    assert p.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_create_exclusive_refuses_existing(tmp_path: Path) -> None:
    p = tmp_path / "k"
    create_exclusive(p, b"one")
    with pytest.raises(FileExistsError):
        create_exclusive(p, b"two")
    assert p.read_bytes() == b"one"
    assert sorted(os.listdir(tmp_path)) == ["k"]


WRITER = """
import sys
from boxbox.atomic import AtomicWriter
path, marker = sys.argv[1], sys.argv[2].encode()
print("ready", flush=True)
while True:
    with AtomicWriter(path) as f:
        for _ in range(64):
            f.write(marker * 16384)
"""


def test_sigkill_mid_write_leaves_old_or_new(tmp_path: Path) -> None:
    p = tmp_path / "data"
    old = b"A" * (64 * 16384)
    write_atomic(p, old)
    allowed = {b"A"}
    for i in range(12):
        marker = b"BCDEFGHIJKLMNOPQ"[i % 16 : i % 16 + 1]
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(p), marker.decode()],
                                stdout=subprocess.PIPE, env=boxbox_env())
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(0.01 + 0.013 * i)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        content = p.read_bytes()
        assert len(content) == len(old)
        assert content == content[:1] * len(content), "mixed content after kill"
        allowed.add(marker)
        assert content[:1] in allowed
