"""The one-file build: `build/shiv.sh` makes a `dist/boxbox` that runs anywhere with python3 >= 3.10.

Each build runs from a snapshot of the checkout in a temp directory, so the tests neither
overwrite the checkout's dist/ nor see files other people are editing mid-build.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from boxbox import __version__
from tests.conftest import ROOT

EPOCH = "1700000000"


def _snapshot(dest: Path, origin: Path = ROOT) -> Path:
    """Copy what the build reads (the package and the script) from ORIGIN into DEST."""
    shutil.copytree(origin / "boxbox", dest / "boxbox", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / "build").mkdir()
    shutil.copy2(origin / "build" / "shiv.sh", dest / "build" / "shiv.sh")
    return dest


def _build_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["SOURCE_DATE_EPOCH"] = EPOCH
    # the test virtualenv's shiv (installed by the `test` extra) wins over any other
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def build(src: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["sh", str(src / "build" / "shiv.sh"), *args], capture_output=True, text=True,
                          env=_build_env(), timeout=300)
    assert proc.returncode == 0, f"build/shiv.sh {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="session")
def zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dist/boxbox, built once per session from a snapshot of the checkout."""
    src = _snapshot(tmp_path_factory.mktemp("build-a"))
    proc = build(src)
    exe = src / "dist" / "boxbox"
    assert f"dist/boxbox: {exe.stat().st_size} bytes" in proc.stdout
    return exe


def _run_outside(exe: Path, tmp_path: Path, *args: str,
                 python: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the zipapp from a directory outside the checkout, with nothing of the checkout on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BOXBOX_EXE")}
    env["SHIV_ROOT"] = str(tmp_path / "shiv")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    cmd = [*python, str(exe)] if python else [str(exe)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_version_runs_outside_the_checkout(zipapp: Path, tmp_path: Path) -> None:
    proc = _run_outside(zipapp, tmp_path, "--version")
    assert (proc.returncode, proc.stdout.strip()) == (0, f"boxbox {__version__}"), proc.stderr
    # shiv unpacked the bundled packages where SHIV_ROOT says, not in ~/.shiv
    assert glob.glob(str(tmp_path / "shiv" / "*" / "site-packages" / "cryptography"))


def test_zipapp_uses_its_bundled_cryptography(zipapp: Path, tmp_path: Path) -> None:
    # -S: no system site-packages, so cryptography can only come from the zipapp
    proc = _run_outside(zipapp, tmp_path, "ca", "init", str(tmp_path / "ca"), python=[sys.executable, "-S"])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    mistake = _run_outside(zipapp, tmp_path, "ca", "init", str(tmp_path / "ca"))
    assert mistake.returncode == 1 and mistake.stderr.startswith("boxbox: permission denied: refusing")


def _interpreters() -> list[str]:
    """Every CPython >= 3.10 this machine can run (PATH and pyenv), one per minor version."""
    found: dict[str, str] = {}
    candidates = [shutil.which(f"python3.{m}") for m in range(10, 20)]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))
    for c in filter(None, candidates):
        try:
            out = subprocess.run([c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        version = out.stdout.strip()
        if out.returncode == 0 and tuple(map(int, version.split("."))) >= (3, 10):
            found.setdefault(version, c)
    return [found[v] for v in sorted(found, key=lambda v: tuple(map(int, v.split("."))))]


@pytest.mark.parametrize("python", _interpreters() or [sys.executable])
def test_runs_on_each_python(zipapp: Path, tmp_path: Path, python: str) -> None:
    proc = _run_outside(zipapp, tmp_path, "ca", "request", "1", "--out", str(tmp_path / "req"), python=[python])
    assert proc.returncode == 0, f"{python}: {proc.stderr}"
    assert (tmp_path / "req" / "client.csr").read_bytes().startswith(b"-----BEGIN CERTIFICATE REQUEST-----")


def test_two_builds_are_byte_identical(zipapp: Path, tmp_path: Path) -> None:
    """Different directory, same sources and SOURCE_DATE_EPOCH: the same bytes."""
    src = _snapshot(tmp_path / "build-b", origin=zipapp.parent.parent)  # the first build's sources
    build(src)
    first, second = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (zipapp, src / "dist" / "boxbox"))
    assert first == second


def test_unknown_platform_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(["sh", str(ROOT / "build" / "shiv.sh"), "--platform", "sparc64"],
                          capture_output=True, text=True, env=_build_env(), timeout=60)
    assert proc.returncode == 2
    assert "unsupported platform 'sparc64'" in proc.stderr


ELF_MACHINE = {"aarch64": 0xB7, "armv7l": 0x28}


def test_cross_builds_carry_that_platforms_wheels(tmp_path: Path) -> None:
    src = _snapshot(tmp_path)
    proc = build(src, "--platform", "aarch64", "--platform", "armv7l")
    for arch, machine in ELF_MACHINE.items():
        exe = src / "dist" / f"boxbox-{arch}"
        assert f"dist/boxbox-{arch}: {exe.stat().st_size} bytes" in proc.stdout
        with zipfile.ZipFile(exe) as z:
            names = z.namelist()
            rust = z.read("site-packages/cryptography/hazmat/bindings/_rust.abi3.so")
            assert int.from_bytes(rust[18:20], "little") == machine, arch  # ELF e_machine
            cffi = sorted(n for n in names if "_cffi_backend" in n)
            if arch == "aarch64":
                assert cffi == [f"site-packages/_cffi_backend.cpython-3{m}-aarch64-linux-gnu.so"
                                for m in range(10, 15)]
            else:  # no armv7l cffi wheel on PyPI: the preamble asks for the system's backend
                assert cffi == [] and "site-packages/bin/armv7l_check.py" in names
