"""Storage faults under a running server: ENOSPC, EIO on read, short writes, the Nth fsync/rename failing,
a RAID directory lost or unreadable, and (where tmpfs can be mounted) a real full disc.

The faults come from `tests.fault.shim`, which wraps the raidfile layer's `os` calls in the
server subprocess only; each test turns a fault on by writing the control file and off by
removing it. Every fault must give the client a clear error, leave no partial object and
right usage counts, and the next run must complete once the fault is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.fault.harness import Setup, errors, mutate_tree

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(os.environ.get("BOXBOX_EXE")), reason="source tree only")]


#: A client run that takes longer than this under a fault is hung (a clean run here takes ~1 s).
HANG = 20


class Faulty(Setup):
    def __init__(self, tmp: Path, test_ca: Any, **kw: Any) -> None:
        self.control = tmp / "fault.json"
        super().__init__(tmp, test_ca, faults={"control": str(self.control)}, big=1, files=16, **kw)

    def fault(self, **spec: Any) -> None:
        self.control.write_text(json.dumps(spec))

    def heal(self) -> None:
        self.control.unlink(missing_ok=True)

    def temps(self) -> list[Path]:
        return [p for d in self.server.discs for p in d.rglob("*.rfw")]


@pytest.fixture()
def faulty(tmp_path: Path, test_ca: Any) -> Iterator[Faulty]:
    f = Faulty(tmp_path, test_ca)
    f.finish()
    yield f
    f.server.stop()


def _faulted_run(f: Faulty, seed: int) -> subprocess.CompletedProcess[str]:
    mutate_tree(f.src, seed)
    (f.src / "new-under-fault.bin").write_bytes(os.urandom(300_000))
    try:
        return f.client_once(timeout=HANG)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the client hung for {HANG} s: the server never answered the failed write") from None


def _after_fault(f: Faulty, proc: subprocess.CompletedProcess[str], expect_error: bool = True) -> None:
    """The fault's run told the user; the store is consistent; the next run completes."""
    assert f.server.alive(), "the server died of a storage fault"
    print(f"client under the fault: exit {proc.returncode}, "
          f"{[ln for ln in proc.stderr.splitlines() if ln.startswith('boxbox:')][-1:] or 'no boxbox: line'}")
    if expect_error:
        lines = proc.stderr
        assert proc.returncode != 0 or "error" in lines.lower(), f"no error reported: {proc.stderr[-2000:]}"
    report = f.server.check(f.account)
    assert errors(report) == 0, report.get("problems")  # no partial object, usage counts right
    assert f.temps() == [], "an abandoned write left temp stripes"
    f.heal()
    f.verify(f.tmp / "out")


@pytest.mark.parametrize("spec", [
    pytest.param({"op": "writev", "errno": "ENOSPC", "nth": 1, "sticky": True}, id="enospc-every-write"),
    pytest.param({"op": "writev", "errno": "ENOSPC", "nth": 5, "sticky": True}, id="enospc-after-4-writes"),
    pytest.param({"op": "fsync", "errno": "EIO", "nth": 1}, id="first-fsync-fails"),
    pytest.param({"op": "fsync", "errno": "EIO", "nth": 4}, id="fourth-fsync-fails"),
    pytest.param({"op": "replace", "errno": "EIO", "nth": 1}, id="first-rename-fails"),
    pytest.param({"op": "replace", "errno": "EIO", "nth": 2}, id="second-rename-fails"),
    pytest.param({"op": "replace", "errno": "ENOSPC", "nth": 3, "sticky": True}, id="renames-fail-from-third"),
])
def test_write_fault(faulty: Faulty, spec: dict[str, Any]) -> None:
    faulty.fault(**spec)
    proc = _faulted_run(faulty, 5)
    _after_fault(faulty, proc)


def test_short_writes_are_completed(faulty: Faulty) -> None:
    """Every writev writes only half: the writer must finish the rest itself; nothing is wrong."""
    faulty.fault(op="writev", short=True, nth=1, sticky=True)
    proc = _faulted_run(faulty, 6)
    assert proc.returncode == 0, proc.stderr
    faulty.assert_clean()
    faulty.assert_restores(faulty.tmp / "out")  # while the fault is still on
    _after_fault(faulty, proc, expect_error=False)


def test_eio_on_every_read_is_a_clear_error(faulty: Faulty) -> None:
    faulty.fault(op="pread", errno="EIO", nth=1, sticky=True)
    out = faulty.tmp / "out-eio"
    proc = subprocess.run([*__import__("tests.conftest", fromlist=["x"]).boxbox_command(), "query", "--config",
                           str(faulty.conf), "--quiet", "restore", "/home", str(out)],
                          capture_output=True, text=True, env=__import__("tests.conftest", fromlist=["x"]).boxbox_env(),
                          timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "boxbox:" in proc.stderr, proc.stderr
    proc = _faulted_run(faulty, 7)  # diffs need the old versions read: refused, not half-done
    _after_fault(faulty, proc)


def test_eio_on_one_disc_is_covered_by_raid(faulty: Faulty) -> None:
    """Reads from one of the three directories fail: parity covers them, restores stay identical."""
    faulty.fault(op="pread", errno="EIO", nth=1, sticky=True, path=str(faulty.server.discs[1]))
    faulty.assert_restores(faulty.tmp / "out")
    proc = _faulted_run(faulty, 8)
    assert proc.returncode == 0, proc.stderr
    faulty.assert_restores(faulty.tmp / "out")
    _after_fault(faulty, proc, expect_error=False)


@pytest.mark.parametrize("how", ["removed", "unreadable"])
def test_raid_directory_lost_while_running(tmp_path: Path, test_ca: Any, how: str) -> None:
    if how == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads a mode-000 directory anyway")
    s = Setup(tmp_path, test_ca, big=1, files=16)
    try:
        s.finish()
        lost = s.server.discs[2]
        if how == "removed":
            shutil.rmtree(lost)
        else:
            os.chmod(lost, 0)
        try:
            s.assert_restores(tmp_path / "out")  # service continues from the other two
            mutate_tree(s.src, 9)
            run = s.client_once()
            assert s.server.alive()
            assert "Traceback" not in run.stderr
        finally:
            if how == "removed":
                lost.mkdir(exist_ok=True)
            else:
                os.chmod(lost, stat.S_IRWXU)
        report = s.server.check(s.account, fix=True)
        assert report.get("remaining", 0) == 0, report
        assert any(lost.rglob("*.rf")), "check --fix did not rebuild the lost directory"
        s.verify(tmp_path / "out")
    finally:
        s.server.stop()


def test_real_disc_full_on_tmpfs(tmp_path: Path, test_ca: Any) -> None:
    """Three 3 MiB tmpfs mounts as the disc set: a backup bigger than that fails cleanly."""
    discs = [tmp_path / f"tmpfs{i}" for i in range(3)]
    mounted = []
    try:
        for d in discs:
            d.mkdir()
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(d)],
                               capture_output=True)
            if r.returncode != 0:
                pytest.skip(f"cannot mount tmpfs here: {r.stderr.decode().strip()}")
            mounted.append(d)
        s = Setup(tmp_path, test_ca, big=0, files=10, discs=discs)
        try:
            s.finish()
            (s.src / "too-big.bin").write_bytes(os.urandom(8 << 20))
            run = s.client_once()
            assert s.server.alive()
            assert run.returncode != 0 or "error" in run.stderr.lower(), run.stderr[-2000:]
            report = s.server.check(s.account)
            assert errors(report) == 0, report.get("problems", report)
            assert not [p for d in discs for p in d.rglob("*.rfw")]
            (s.src / "too-big.bin").unlink()
            s.verify(tmp_path / "out")
        finally:
            s.server.stop()
    finally:
        for d in mounted:
            subprocess.run(["umount", str(d)], capture_output=True)


def test_disc_full_is_named_to_the_client(faulty: Faulty) -> None:
    faulty.fault(op="writev", errno="ENOSPC", nth=1, sticky=True)
    proc = _faulted_run(faulty, 10)
    line = ([ln for ln in proc.stderr.splitlines() if ln.startswith("boxbox:")] or [""])[-1]
    assert proc.returncode != 0
    assert "bug" not in line and any(w in line.lower() for w in ("space", "full", "storage")), line
