"""Shared fixtures: Hypothesis profiles, the `run_boxbox` helper, free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", deadline=None, max_examples=2000, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

ROOT = Path(__file__).resolve().parent.parent


def boxbox_command() -> list[str]:
    """How tests start boxbox: the source tree, or the zipapp when BOXBOX_EXE is set."""
    exe = os.environ.get("BOXBOX_EXE")
    return [exe] if exe else [sys.executable, "-m", "boxbox"]


def boxbox_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_boxbox(*args: str, exit_code: int = 0, input: str | None = None, cwd: str | Path | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run boxbox and check its exit code; a failure must be a one-line `boxbox:` error, no traceback."""
    proc = subprocess.run([*boxbox_command(), *args], capture_output=True, text=True, input=input,
                          cwd=cwd, env=boxbox_env(), timeout=timeout)
    assert proc.returncode == exit_code, (
        f"boxbox {' '.join(args)}: exit {proc.returncode}, expected {exit_code}\n"
        f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    assert "Traceback" not in proc.stderr, proc.stderr
    if exit_code not in (0, 2):
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("boxbox: ")]
        assert lines, f"no 'boxbox: ' error line in {proc.stderr!r}"
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc: "subprocess.Popen[bytes]", port: int, log: Path, timeout: float = 20) -> None:
    """Return once a just-started server accepts TCP on 127.0.0.1:port; fail with its log if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not start listening")


# ---- test CA: begin (owned by the `boxbox ca` engineer; issue 2 part 4) ----
class SessionCA:
    """A CA made once per session; client directories are issued on first use per account.

    Revoke only accounts your own test made up: the CA and its CRL are shared.
    """

    def __init__(self, root: Path) -> None:
        from boxbox.ca import authority

        self._authority = authority
        self.root = root
        self.cadir = root / "ca"
        self.server_dir = root / "server"
        authority.init_ca(self.cadir)
        self.server_serial = authority.sign_server(self.cadir, "localhost", self.server_dir,
                                                   alt_names=["127.0.0.1"]).serial
        self._clients: dict[int, int] = {}

    @property
    def ca_cert(self) -> Path:
        return self.cadir / "ca.crt"

    @property
    def crl(self) -> Path:
        """The CA's current CRL (rewritten by every `revoke`)."""
        return self.cadir / "crl.pem"

    def client_dir(self, account: int) -> Path:
        """`client.crt`, `client.key`, `ca.crt` for ACCOUNT (CN BACKUP-%08x), made on first use."""
        out = self.root / f"client-{account:08x}"
        if account not in self._clients:
            self._clients[account] = self._authority.sign_client(self.cadir, account, out).serial
        return out

    def client_serial(self, account: int) -> int:
        """The serial of ACCOUNT's certificate, to pass to `revoke`."""
        self.client_dir(account)
        return self._clients[account]

    def revoke(self, serial: int) -> Path:
        """Revoke SERIAL; returns the CRL path."""
        return self._authority.revoke(self.cadir, serial)


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> SessionCA:
    """The session's test CA: `.cadir`, `.server_dir`, `.client_dir(account)`, `.revoke(serial)`, `.crl`."""
    return SessionCA(tmp_path_factory.mktemp("test-ca"))
# ---- test CA: end ----


# ---- SeaweedFS S3 test bed: begin (issue 12; tests/seaweed.py) ----
def _start_seaweed(kind: str, root: Path):  # -> tests.seaweed.SeaweedServer | SeaweedCluster
    """Start a SeaweedFS test bed and wait until it takes writes; skip (never pass) if it cannot run."""
    from tests import seaweed

    try:
        seaweed.weed_binary()
    except seaweed.SeaweedUnavailable as e:
        pytest.skip(f"SeaweedFS unavailable: {e}")
    bed = seaweed.SeaweedServer(root) if kind == "server" else seaweed.SeaweedCluster(root)
    try:
        bed.wait_ready()
    except BaseException:
        bed.stop()
        raise
    return bed


def _stop_seaweed(bed) -> None:  # noqa: ANN001
    """Stop every process of the bed by PID and check that each has really exited."""
    procs = [p.proc for p in bed.processes if p.proc is not None]
    bed.stop()
    left = [proc.pid for proc in procs if proc.poll() is None]
    assert not left, f"weed processes still running after stop: {left}"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory):  # -> tests.seaweed.SeaweedServer
    """One `weed server -s3` for the session: `.endpoint`, `.access_key`, `.secret_key`,
    `.settings(bucket, **overrides) -> S3Settings`, `.new_bucket() -> S3Settings` (a fresh bucket), `.pids`."""
    bed = _start_seaweed("server", tmp_path_factory.mktemp("seaweed"))
    yield bed
    _stop_seaweed(bed)


@pytest.fixture(scope="module")
def seaweed_cluster(tmp_path_factory: pytest.TempPathFactory):  # -> tests.seaweed.SeaweedCluster
    """A master, three volume servers (replication 001), a filer and an S3 gateway, per module:
    as `seaweed`, plus `.kill_volume(i)`, `.restart_volume(i)`, `.master`, `.volumes`, `.filer`, `.s3`."""
    bed = _start_seaweed("cluster", tmp_path_factory.mktemp("seaweed-cluster"))
    yield bed
    _stop_seaweed(bed)
# ---- SeaweedFS S3 test bed: end ----
