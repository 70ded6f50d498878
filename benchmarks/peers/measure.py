"""Measuring processes: wall, CPU and peak RSS of commands and daemons; loopback byte counts.

- A command the benchmark runs and waits for: CPU and peak RSS from its rusage (os.wait4;
  ru_maxrss is the peak of the largest process in the tree that was waited for).
- A daemon (bbstored, bbackupd, boxbox server): CPU from /proc/PID/stat utime+stime+cutime+
  cstime (its reaped children, e.g. bbstored's per-connection processes, included); peak
  RSS: VmHWM of it and of every descendant, sampled every 20 ms by a thread, after
  resetting the daemon's own VmHWM at the start of each phase (/proc/PID/clear_refs 5).
- Bytes over the socket: the whole benchmark runs in its own network namespace (unshare -n),
  so the loopback interface's counters in /proc/net/dev count exactly the traffic of the
  system being measured (TCP/IP headers included).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime+stime+cutime+cstime in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK


def proc_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def reset_hwm(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def children_of(pid: int) -> list[int]:
    """Every descendant of pid (one /proc scan)."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.extend(kids)
        todo.extend(kids)
    return out


def lo_counters() -> tuple[int, int]:
    """(bytes, packets) sent on the loopback interface of this network namespace."""
    with open("/proc/net/dev") as f:
        for line in f:
            if line.strip().startswith("lo:"):
                v = line.split(":", 1)[1].split()
                return int(v[8]), int(v[9])
    return 0, 0


class HwmSampler:
    """Peak VmHWM (KiB) of a set of daemons and their descendants, sampled in a thread."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def watch(self, role: str, pid: int) -> None:
        reset_hwm(pid)
        self.pids[role] = pid
        self.peak[role] = proc_hwm_kib(pid)

    def take(self, role: str) -> int:
        """Peak since watch(); stops watching."""
        pid = self.pids.pop(role)
        self._sample(role, pid)
        return self.peak.pop(role)

    def _sample(self, role: str, pid: int) -> None:
        best = proc_hwm_kib(pid)
        for c in children_of(pid):
            best = max(best, proc_hwm_kib(c))
        self.peak[role] = max(self.peak.get(role, 0), best)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for role, pid in list(self.pids.items()):
                self._sample(role, pid)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


@dataclass
class Result:
    wall: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    net_bytes: int = 0
    client_rss_kib: int = 0
    server_rss_kib: int = 0
    store_bytes: int = 0
    ok: bool = True
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)


RUNRSS: str | None = None  # the launcher built by systems.build_runrss, when gcc is there


def run_measured(cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
                 log: str | None = None, timeout: float = 3600) -> tuple[int, float, float, int]:
    """Run a command to completion: (exit code, wall s, CPU s, peak RSS KiB).

    Through the RUNRSS launcher when there is one (the peak RSS is then the command's own;
    without it ru_maxrss also carries this Python process's high-water mark from before exec).
    """
    out = open(log, "ab") if log else subprocess.DEVNULL
    report = None
    if RUNRSS:
        fd, report = tempfile.mkstemp(prefix="runrss-")
        os.close(fd)
        cmd = [RUNRSS, report, *cmd]
    try:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=out if log else subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.kill(p.pid, signal.SIGKILL)
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        cpu, rss = ru.ru_utime + ru.ru_stime, ru.ru_maxrss
        if report:
            try:
                with open(report) as f:
                    v = f.read().split()
                rss, cpu = int(v[0]), float(v[1]) + float(v[2])
            except (OSError, IndexError, ValueError):
                pass
        return p.returncode, wall, cpu, rss
    finally:
        if report:
            os.unlink(report)
        if log:
            out.close()  # type: ignore[union-attr]


def stop_pid(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 15) -> None:
    """Stop a daemon we started, and any descendants it left, by PID."""
    if proc.poll() is not None:
        return
    kids = children_of(proc.pid)
    try:
        os.kill(proc.pid, sig)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass
