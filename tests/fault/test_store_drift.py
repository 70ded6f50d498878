"""Store bookkeeping over ordinary runs, without any fault: what the crash runs found drifting.

Pinned here on its own so the crash runs can tell a crash's damage from this.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.fault.harness import Setup, errors

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(os.environ.get("BOXBOX_EXE")), reason="source tree only")]


def test_directory_entry_size_follows_its_object(tmp_path: Path, test_ca: Any) -> None:
    s = Setup(tmp_path, test_ca, files=0)
    try:
        sub = s.src / "grows"
        sub.mkdir()
        (sub / "first").write_bytes(b"1")
        s.finish()
        assert errors(s.server.check(s.account)) == 0
        for run in range(25):  # one file changed each run: its old versions pile up in the directory
            (s.src / "changing.bin").write_bytes(os.urandom(300) + b"%d" % run + bytes(20_000))
            s.finish()
            report = s.server.check(s.account)
            assert errors(report) == 0, (run, report.get("problems"))
    finally:
        s.server.stop()
