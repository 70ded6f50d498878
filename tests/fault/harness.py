"""A real store server on a three-directory RAID disc set, a client around it, and the checks that follow a fault.

Every fault test ends the same way: the client finishes a clean run, `boxbox accounts
check` reports no errors, and a full `boxbox query restore` equals the source tree.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from tests.clientutil import client_config, local_tree
from tests.conftest import ROOT, boxbox_command, boxbox_env, free_port, run_boxbox, wait_listening

#: The fault shim wraps the server: `python -m tests.fault.shim server ...` (source tree only).
SHIM = [sys.executable, "-m", "tests.fault.shim"]


class FaultServer:
    """`boxbox server --foreground` on a 3-directory disc set; killable, restartable, optionally shimmed."""

    def __init__(self, tmp: Path, test_ca: Any, *, housekeeping: str = "0", discs: list[Path] | None = None) -> None:
        self.tmp = tmp
        self.ca = test_ca
        self.port = free_port()
        self.config = tmp / "server.conf"
        self.log = tmp / "server.log"
        self.discs = discs or [tmp / f"disc{i}" for i in range(3)]
        for d in self.discs:
            d.mkdir(parents=True, exist_ok=True)
        sd = test_ca.server_dir
        self.config.write_text(textwrap.dedent(f"""\
            [server]
            listen = 127.0.0.1
            port = {self.port}
            certificate = {sd / 'server.crt'}
            private_key = {sd / 'server.key'}
            ca_certificate = {test_ca.ca_cert}
            account_database = {tmp / 'accounts.db'}
            housekeeping_interval = {housekeeping}
            idle_timeout = 30s
            read_timeout = 10s
            log_level = info

            [discset 0]
            directories = {', '.join(str(d) for d in self.discs)}
            """))
        self.proc: subprocess.Popen[bytes] | None = None
        self._next_account = 0xF000

    def new_account(self, soft: str = "500M", hard: str = "600M") -> int:
        self._next_account += 1
        self.accounts("create", f"{self._next_account:x}", "--soft", soft, "--hard", hard)
        return self._next_account

    def accounts(self, *args: str, exit_code: int = 0, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_boxbox("accounts", "--config", str(self.config), *args, exit_code=exit_code, timeout=timeout)

    def check(self, account: int, fix: bool = False) -> dict[str, Any]:
        """`accounts check --json` (with `--fix` if asked), as a dict with the exit code under "_exit"."""
        args = ["check", f"{account:x}", "--json"] + (["--fix"] if fix else [])
        for _ in range(40):  # the server's own housekeeping may hold the account for a moment
            proc = subprocess.run([*boxbox_command(), "accounts", "--config", str(self.config), *args],
                                  capture_output=True, text=True, env=boxbox_env(), timeout=120)
            if "is being housekept or checked" not in proc.stderr:
                break
            time.sleep(0.25)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.stdout.strip(), f"check printed nothing (exit {proc.returncode}): {proc.stderr}"
        report = json.loads(proc.stdout)
        report["_exit"] = proc.returncode
        return report

    def start(self, faults: dict[str, str] | None = None) -> None:
        """Start (again); `faults` are BOXBOX_TEST_FAULT_* settings for the shim (the shim is used only then)."""
        if faults is not None:
            args = [*SHIM, "server"]
        else:
            args = [*boxbox_command(), "server"]
        args += ["--config", str(self.config), "--foreground"]
        if os.geteuid() == 0:
            args.append("--allow-root")
        env = boxbox_env()
        for k, v in (faults or {}).items():
            env[f"BOXBOX_TEST_FAULT_{k.upper()}"] = v
        self.proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        wait_listening(self.proc, self.port, self.log)

    def kill(self) -> None:
        """kill -9, as a power cut would."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(20)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def make_tree(root: Path, seed: int, files: int = 30, big: int = 0) -> None:
    """A small tree with nested directories, text and random files; `big` files of ~1-2 MiB."""
    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        d = root / f"d{i % 4}" / f"e{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        if i % 2:
            (d / f"f{i}.txt").write_bytes((b"line %d of file %d\n" % (rnd.randrange(9999), i)) * rnd.randrange(1, 400))
        else:
            (d / f"f{i}.bin").write_bytes(rnd.randbytes(rnd.randrange(0, 40_000)))
    for i in range(big):
        (root / f"big{i}.bin").write_bytes(rnd.randbytes(rnd.randrange(1 << 20, 2 << 20)))


def mutate_tree(root: Path, seed: int) -> None:
    """Edits, appends, deletions and new files: enough for diff uploads and old versions."""
    rnd = random.Random(seed)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for p in rnd.sample(files, min(len(files), 6)):
        data = bytearray(p.read_bytes())
        choice = rnd.randrange(4)
        if choice == 0 and data:
            at = rnd.randrange(len(data))
            data[at:at + 100] = rnd.randbytes(100)
            p.write_bytes(bytes(data))
        elif choice == 1:
            p.write_bytes(bytes(data) + rnd.randbytes(rnd.randrange(1, 5000)))
        elif choice == 2:
            p.unlink()
        else:
            (p.parent / f"new{seed}-{rnd.randrange(1 << 30)}.bin").write_bytes(rnd.randbytes(rnd.randrange(1, 9000)))
    for p in root.glob("big*.bin"):
        data = bytearray(p.read_bytes())
        at = rnd.randrange(len(data))
        data[at:at + 4096] = rnd.randbytes(4096)
        p.write_bytes(bytes(data))


class Setup:
    """A server, one account, its client config and source tree."""

    def __init__(self, tmp: Path, test_ca: Any, *, housekeeping: str = "0", soft: str = "500M", hard: str = "600M",
                 big: int = 0, files: int = 30, start: bool = True, faults: dict[str, str] | None = None,
                 discs: list[Path] | None = None) -> None:
        self.tmp = tmp
        (tmp / "srv").mkdir(parents=True, exist_ok=True)
        self.server = FaultServer(tmp / "srv", test_ca, housekeeping=housekeeping, discs=discs)
        self.account = self.server.new_account(soft, hard)
        self.src = tmp / "src"
        make_tree(self.src, 1, files=files, big=big)
        self.conf = client_config(tmp, self.server, self.account, self.src,  # type: ignore[arg-type]
                                  extra="diffing_upload_size_threshold = 4096\n")
        if start:
            self.server.start(faults)

    def client_once(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """One client run; any exit allowed (the caller checks), but never a traceback."""
        proc = subprocess.run([*boxbox_command(), "client", "--config", str(self.conf), "--once"],
                              capture_output=True, text=True, env=boxbox_env(), timeout=timeout)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def client_popen(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*boxbox_command(), "client", "--config", str(self.conf), "--once"],
                                env=boxbox_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def finish(self, tries: int = 5) -> None:
        """Client runs until one ends cleanly (a killed server may hold the account lock for a moment)."""
        last = None
        for _ in range(tries):
            last = self.client_once()
            if last.returncode == 0:
                return
            time.sleep(0.5)
        raise AssertionError(f"client never finished cleanly: {last.stderr if last else ''}")

    def assert_clean(self) -> None:
        report = self.server.check(self.account)
        assert errors(report) == 0, report.get("problems", report)

    def restore(self, out: Path) -> subprocess.CompletedProcess[str]:
        return run_boxbox("query", "--config", str(self.conf), "--quiet", "restore", "/home", str(out), timeout=180)

    def assert_restores(self, out: Path) -> None:
        if out.exists():
            import shutil
            shutil.rmtree(out)
        self.restore(out)
        assert local_tree(out) == local_tree(self.src)

    def verify(self, out: Path) -> None:
        """The end of every fault: a clean run, a clean check, an identical restore."""
        self.finish()
        self.assert_clean()
        self.assert_restores(out)


def errors(report: dict[str, Any]) -> int:
    """Errors in a `check --json` report, however the report names them."""
    for key in ("errors", "error_count", "problems"):
        if key in report:
            v = report[key]
            return len(v) if isinstance(v, list) else int(v)
    if "accounts" in report:
        return sum(errors(a) for a in report["accounts"])
    raise AssertionError(f"no error count in {report}")
