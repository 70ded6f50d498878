#!/usr/bin/env python3
"""The backup client on a generated tree: first backup, a no-change run, a run after 1 % changes.

A real `boxbox server` and a real `boxbox client --foreground` daemon (snapshot mode) run on
127.0.0.1; each run is started with `ctl sync-and-wait` (through the library, no extra
process). Per run: wall time as the daemon measured it (the daemon is already running, as
in production), the daemon's CPU time (/proc utime + stime), bytes sent on the wire, and the
daemon's peak RSS during that run (VmHWM, reset through /proc/PID/clear_refs before each run
where the kernel allows it; else the peak so far). The tree is 20,000 files / 600 MB (default) or 2,000 files /
60 MB (--quick): log-uniform sizes, half random and half compressible text, 100 files a
directory. The 1 % mutation: in a third of the files 4 KiB appended, in a third a 4 KiB
block-aligned piece overwritten, a third rewritten whole; `incr_bytes_ratio` = bytes sent /
bytes actually changed. The last line is machine-readable:

    RESULT first_s=X nochange_s=X incremental_s=X incr_bytes_ratio=X client_rss_mib=X
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boxbox.backup.control import request  # noqa: E402
from boxbox.ca import authority  # noqa: E402
from boxbox.crypto.keys import create_keys_file  # noqa: E402

ACCOUNT = 0x1234
PIECE = 4096


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _boxbox(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "boxbox", *args], check=True, env=_env(), stdout=subprocess.DEVNULL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tree(root: Path, files: int, total: int, seed: int = 1) -> list[Path]:
    """Log-uniform sizes (1 KiB .. 512 KiB) scaled to `total`; half random, half compressible text."""
    rng = random.Random(seed)
    sizes = [math.exp(rng.uniform(math.log(1024), math.log(512 << 10))) for _ in range(files)]
    scale = total / sum(sizes)
    paths = []
    for i, size in enumerate(sizes):
        d = root / f"d{i // 100:04d}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        n = max(1, int(size * scale))
        if i % 2:
            data = os.urandom(n)
        else:
            data = base64.b64encode(os.urandom(n // 4 * 3 + 3))[:n]
        p = d / f"file{i:05d}.dat"
        p.write_bytes(data)
        paths.append(p)
    return paths


def mutate(paths: list[Path], fraction: float, seed: int = 2) -> int:
    """Change `fraction` of the files; returns the bytes actually changed."""
    rng = random.Random(seed)
    chosen = rng.sample(paths, max(1, int(len(paths) * fraction)))
    changed = 0
    for k, p in enumerate(chosen):
        size = p.stat().st_size
        if k % 3 == 0:
            with open(p, "ab") as f:
                f.write(os.urandom(PIECE))
            changed += PIECE
        elif k % 3 == 1 and size >= 2 * PIECE:
            off = rng.randrange(size // PIECE) * PIECE
            n = min(PIECE, size - off)
            with open(p, "r+b") as f:
                f.seek(off)
                f.write(os.urandom(n))
            changed += n
        else:
            p.write_bytes(os.urandom(size))
            changed += size
    return changed


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _reset_hwm(pid: int) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass  # not allowed here: the figure is the peak since the daemon started


def _hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 files / 60 MB (under 60 s)")
    ap.add_argument("--files", type=int, default=None)
    ap.add_argument("--mb", type=int, default=None)
    args = ap.parse_args()
    files = args.files or (2000 if args.quick else 20000)
    total = (args.mb or (60 if args.quick else 600)) * 1000 * 1000
    with tempfile.TemporaryDirectory(prefix="boxbox-client-bench-") as tmpdir:
        tmp = Path(tmpdir)
        authority.init_ca(tmp / "ca")
        authority.sign_server(tmp / "ca", "localhost", tmp / "server", alt_names=["127.0.0.1"])
        authority.sign_client(tmp / "ca", ACCOUNT, tmp / "client")
        port = _free_port()
        (tmp / "disc").mkdir()
        server_conf = tmp / "server.conf"
        server_conf.write_text(textwrap.dedent(f"""\
            [server]
            listen = 127.0.0.1
            port = {port}
            certificate = {tmp / 'server' / 'server.crt'}
            private_key = {tmp / 'server' / 'server.key'}
            ca_certificate = {tmp / 'ca' / 'ca.crt'}
            account_database = {tmp / 'accounts.db'}
            log_level = warning

            [discset 0]
            directories = {tmp / 'disc'}
            """))
        _boxbox("accounts", "--config", str(server_conf), "create", f"{ACCOUNT:x}", "--soft", "20G", "--hard", "20G")
        tree = tmp / "tree"
        t0 = time.monotonic()
        paths = make_tree(tree, files, total)
        print(f"tree: {files} files, {total / 1e6:.0f} MB in {time.monotonic() - t0:.1f} s", flush=True)
        create_keys_file(tmp / "keys.dat")
        client_conf = tmp / "client.conf"
        client_conf.write_text(textwrap.dedent(f"""\
            [client]
            server = localhost
            port = {port}
            account = {ACCOUNT:x}
            certificate = {tmp / 'client' / 'client.crt'}
            private_key = {tmp / 'client' / 'client.key'}
            ca_certificate = {tmp / 'client' / 'ca.crt'}
            keys_file = {tmp / 'keys.dat'}
            data_directory = {tmp / 'state'}
            automatic_backup = no
            log_level = info

            [location tree]
            path = {tree}
            """))
        extra = ["--allow-root"] if os.geteuid() == 0 else []
        server = subprocess.Popen([sys.executable, "-m", "boxbox", "server", "--config", str(server_conf),
                                   "--foreground", *extra], env=_env())
        client_log = open(tmp / "client.log", "wb")
        client = subprocess.Popen([sys.executable, "-m", "boxbox", "client", "--config", str(client_conf),
                                   "--foreground"], env=_env(), stdout=subprocess.DEVNULL, stderr=client_log)
        sock = tmp / "state" / "command.sock"
        try:
            deadline = time.monotonic() + 30
            while not sock.exists() or not _listening(port):
                if time.monotonic() > deadline or client.poll() is not None or server.poll() is not None:
                    raise SystemExit("server or client did not start")
                time.sleep(0.05)
            time.sleep(2.1)  # past the scanner's racy window, so the first run records everything

            peaks: list[float] = []

            def run(label: str) -> tuple[float, float, int]:
                _reset_hwm(client.pid)
                cpu, server_cpu = _cpu(client.pid), _cpu(server.pid)
                reply = request(sock, "sync-and-wait", timeout=3600)
                if not reply.get("ok"):
                    log_tail = (tmp / "client.log").read_text(errors="replace")[-3000:]
                    raise SystemExit(f"{label}: run failed: {reply.get('error')}\n{log_tail}")
                r = reply["run"]
                wall = r["finished"] - r["started"]
                cpu = _cpu(client.pid) - cpu
                server_cpu = _cpu(server.pid) - server_cpu
                print(f"{label:<14} wall {wall:7.3f} s  cpu {cpu:6.2f} s (server {server_cpu:5.2f} s)  sent {r['bytes_sent']:>12,d} B  "
                      f"files {r['files_uploaded']:>6d} (diffs {r['diffs']})  rss {_hwm_mib(client.pid):5.1f} MiB",
                      flush=True)
                peaks.append(_hwm_mib(client.pid))
                return wall, cpu, r["bytes_sent"]

            first, _, first_sent = run("first backup")
            nochange = sorted(run("no change")[0] for _ in range(3))[1]
            time.sleep(0.1)
            changed = mutate(paths, 0.01)
            time.sleep(2.1)
            incremental, _, sent = run("1% changed")
            rss = max(peaks)
        finally:
            for proc in (client, server):
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        print(f"pid {proc.pid} ignored SIGTERM for 30 s: killed", file=sys.stderr)
                        os.kill(proc.pid, signal.SIGKILL)
                        proc.wait()
        ratio = sent / changed
        print(f"first backup: {total / 1e6 / first:.1f} MB/s; bytes changed {changed:,d}, sent {sent:,d} "
              f"(x{ratio:.2f}); no-change run median of 3")
        print(f"RESULT first_s={first:.3f} nochange_s={nochange:.3f} incremental_s={incremental:.3f} "
              f"incr_bytes_ratio={ratio:.3f} client_rss_mib={rss:.1f}")
    return 0


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
