"""How this boxbox was started, and the store server it runs in the background.

The commands quickstart prints and the server it starts must be the same executable the
user ran: `dist/boxbox` (a zipapp, `sys.argv[0]`), an installed `boxbox`, or
`python3 -m boxbox` from a source tree.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from boxbox.errors import BoxboxError

#: bound on the wait for a new server to answer TLS; generous because under qemu (ARM) it takes ~10 s
START_TIMEOUT = 90.0
PROBE_TIMEOUT = 5.0


def invocation(argv0: str | None = None) -> list[str]:
    """The words that run this boxbox again, from any directory."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    path = Path(os.path.abspath(argv0))
    if path.name == "__main__.py" and path.parent.name == "boxbox":
        return [sys.executable, "-m", "boxbox"]
    if path.is_file() and os.access(path, os.X_OK):
        on_path = shutil.which(path.name)
        if on_path is not None and Path(on_path).resolve() == path.resolve():
            return [path.name]  # found on PATH: print the short form a person would type
        return [str(path)]
    return [sys.executable, str(path)]


def show(words: list[str]) -> str:
    """A command line a shell runs as is."""
    return shlex.join(words)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _is_running(pid: int) -> bool:
    """A live process (a zombie waiting for its parent to reap it counts as gone)."""
    if not os.path.isdir("/proc/1"):  # no /proc (a bare chroot, another OS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def running_server(pid_file: Path, config_path: Path) -> int | None:
    """The pid of the store server that PID_FILE names, if it runs with CONFIG_PATH; else None."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 0 or not _is_running(pid):
        return None
    if not os.path.isdir("/proc/1"):
        return pid  # no /proc: trust the pid file
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    # a pid reused by another process after a crash must not be taken for the server
    return pid if b"server" in cmdline and os.fsencode(config_path) in cmdline else None


def accepts_tls(port: int, context: ssl.SSLContext, timeout: float = PROBE_TIMEOUT) -> bool:
    """Does the server on 127.0.0.1:PORT complete a TLS handshake and a protocol hello?

    Hello then finished, so the server logs the probe as an ordinary finished session.
    """
    from boxbox.wire.client import Client

    try:
        with Client.connect("127.0.0.1", port, context, server_hostname="127.0.0.1", timeout=timeout):
            return True
    except (BoxboxError, OSError):  # refused, reset, timed out, TLS refused, not a boxbox server
        return False


def start_server(command: list[str], config_path: Path, log_path: Path, context: ssl.SSLContext, port: int,
                 allow_root: bool, timeout: float = START_TIMEOUT) -> int:
    """Start `boxbox server` in its own session, output appended to LOG_PATH; return its pid once it answers TLS.

    It runs in the foreground of its own session rather than daemonizing itself, so its
    log goes to a file a person can read and its pid is the one we started.
    """
    args = [*command, "server", "--config", str(config_path), "--foreground"]
    if allow_root:
        args.append("--allow-root")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise BoxboxError(f"the store server exited with status {proc.returncode}: {_last_line(log_path)}",
                              hint=f"its log: {log_path}")
        if accepts_tls(port, context):
            return proc.pid
        if time.monotonic() > deadline:
            proc.terminate()
            proc.wait(10)
            raise BoxboxError(f"the store server did not answer TLS on 127.0.0.1 port {port} within "
                              f"{timeout:.0f} s; stopped it", hint=f"its log: {log_path}")
        time.sleep(0.1)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(nothing logged)"
