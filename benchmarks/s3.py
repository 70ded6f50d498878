#!/usr/bin/env python3
"""First backup and full restore with the store on SeaweedFS (S3) against the store on raidfile.

The tree (default ~300 MB in 10,000 files; `--quick` ~30 MB in 1,000) is half the bytes in
10 large random files, half in small files of mixed compressibility. For
each store kind, in the same run, a fresh `boxbox server` on 127.0.0.1 with one account:
the first backup (`boxbox client --once`), then a full restore (`boxbox query restore`),
each timed as a whole process, and the restored tree compared byte for byte with the
original. The S3 store is a single `weed server -s3` (tests/seaweed.py) on this machine,
over plain http on loopback; the raidfile store is a 3-directory disc set on the same disc.
S3 requests are counted by the server's client (logged when it stops, so it is restarted
between the backup and the restore). Each phase prints its wall time and the CPU seconds of
the client, the boxbox server and SeaweedFS (all its processes) while it ran: on a shared
machine the CPU columns say where the time goes when the walls are noisy. `--rounds N` runs
raidfile then S3 N times (fresh servers and bucket) and reports medians. The last line is
machine-readable:

    RESULT backup_ratio=X restore_ratio=X requests_per_file=X

(ratios: S3 MB/s divided by raidfile MB/s; requests_per_file: S3 requests of the first
backup divided by the files in the tree).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boxbox.ca import authority  # noqa: E402
from restore import ENV, boxbox, client_conf, process_cpu  # noqa: E402

from tests.seaweed import SeaweedServer  # noqa: E402


def make_tree(root: Path, total: int, files: int) -> tuple[int, int]:
    """Half the bytes in 10 large random files under big/, half in small files (100 per
    directory) of mixed compressibility: random, and repetitive text."""
    big = root / "big"
    big.mkdir(parents=True)
    for i in range(10):
        (big / f"large{i}.bin").write_bytes(os.urandom(total // 20))
    n_small = files - 10
    each = total // 2 // n_small
    text = b"the quick brown fox jumps over the lazy dog " * (each // 40 + 1)
    pool = os.urandom(each * 64)
    for i in range(n_small):
        d = root / "small" / f"d{i // 100:03d}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        size = each // 2 + (i * 7919) % each
        (d / f"f{i:05d}.dat").write_bytes(text[:size] if i % 2 else pool[(i * 4099) % (len(pool) - size):][:size])
    return files, sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class Server:
    """A `boxbox server` with one account on a disc set or on a bucket; restartable."""

    def __init__(self, d: Path, s3: object | None) -> None:
        self.d = d
        d.mkdir()
        with socket.create_server(("127.0.0.1", 0)) as s:
            self.port = s.getsockname()[1]
        ca = d.parent
        if s3 is None:
            discs = [d / f"disc{i}" for i in range(3)]
            for disc in discs:
                disc.mkdir()
            store = f"[discset 0]\ndirectories = {', '.join(str(x) for x in discs)}\n"
        else:
            secret = d / "s3.secret"
            secret.write_text(s3.secret_key)  # type: ignore[attr-defined]
            secret.chmod(0o600)
            store = (f"[s3 0]\nendpoint = {s3.endpoint}\nbucket = {s3.bucket}\naccess_key = {s3.access_key}\n"  # type: ignore[attr-defined]
                     f"secret_key_file = {secret}\nallow_http = yes\n")
        self.conf = d / "server.conf"
        self.conf.write_text(textwrap.dedent(f"""\
            [server]
            listen = 127.0.0.1
            port = {self.port}
            certificate = {ca / 'server' / 'server.crt'}
            private_key = {ca / 'server' / 'server.key'}
            ca_certificate = {ca / 'ca' / 'ca.crt'}
            account_database = {d / 'accounts.db'}
            housekeeping_interval = 0
            log_level = info

            """) + store)
        subprocess.run(boxbox("accounts", "--config", str(self.conf), "create", "1", "--soft", "100G", "--hard",
                              "100G"), check=True, env=ENV, stdout=subprocess.DEVNULL)
        self.log = d / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        args = boxbox("server", "--config", str(self.conf), "--foreground")
        if os.geteuid() == 0:
            args.append("--allow-root")
        self.proc = subprocess.Popen(args, env=ENV, stderr=open(self.log, "ab"))
        for _ in range(400):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self.proc.pid
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"server did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> int:
        """Stop it; the S3 requests it made (0 on raidfile)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(60)
        found = re.findall(r"s3 store 0: (\d+) requests", self.log.read_text())
        self.log.write_text("")
        return int(found[-1]) if found else 0


def same_tree(a: Path, b: Path) -> bool:
    """Every file of `a` in `b` with the same bytes (and nothing more)."""
    for dirpath, dirnames, filenames in os.walk(a):
        rel = Path(dirpath).relative_to(a)
        other = b / rel
        if sorted(dirnames + filenames) != sorted(os.listdir(other)):
            return False
        for n in filenames:
            if not filecmp.cmp(Path(dirpath) / n, other / n, shallow=False):
                return False
    return True


def timed(cmd: list[str], server_pid: int, weed: list[int]) -> dict[str, float]:
    """Wall seconds of `cmd`, and the CPU seconds (user + system) of each process while it ran: the
    command (the client), the boxbox server, SeaweedFS (all its processes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = process_cpu(server_pid)
    weed_before = sum(process_cpu(p) for p in weed)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=ENV, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "client": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
            "server": process_cpu(server_pid) - server_before,
            "weed": sum(process_cpu(p) for p in weed) - weed_before}


def run_kind(d: Path, name: str, tree: Path, s3: object | None, weed: list[int]) -> dict[str, dict[str, float]]:
    """Backup and restore timed; `weed`: SeaweedFS's processes, whose CPU time is measured alongside."""
    srv = Server(d / name, s3)
    home = d / name / "c"  # a client of its own (keys, state), with the one certificate
    home.mkdir()
    conf = client_conf(home, srv.port, tree, d / "client")
    pid = srv.start()
    backup = timed(boxbox("client", "--config", str(conf), "--once"), pid, weed)
    backup["requests"] = srv.stop()
    pid = srv.start()
    out = d / name / "restored"
    os.sync()
    restore = timed(boxbox("query", "--config", str(conf), "--quiet", "restore", "/home", str(out)), pid, weed)
    restore["requests"] = srv.stop()
    if not same_tree(tree, out):
        raise SystemExit(f"{name}: the restored tree differs from the original")
    return {"backup": backup, "restore": restore}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~30 MB in 1,000 files (under two minutes)")
    ap.add_argument("--dir", help="work directory (default: a new temporary one)")
    ap.add_argument("--volume-mb", type=int, default=1024,
                    help="SeaweedFS volume size (default 1024; the tests' 16 stalls a PUT whenever a volume fills)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="raidfile then S3, this many times (fresh servers and bucket each); medians reported")
    args = ap.parse_args()
    total, files = (30_000_000, 1_000) if args.quick else (300_000_000, 10_000)
    d = Path(tempfile.mkdtemp(prefix="boxbox-s3-bench-", dir=args.dir))
    bed = None
    try:
        authority.init_ca(d / "ca")
        authority.sign_server(d / "ca", "localhost", d / "server", alt_names=["127.0.0.1"])
        authority.sign_client(d / "ca", 1, d / "client")
        tree = d / "tree"
        nfiles, nbytes = make_tree(tree, total, files)
        bed = SeaweedServer(d / "seaweed", volume_size_mb=args.volume_mb)
        bed.wait_ready()
        print(f"tree: {nfiles} files, {nbytes / 1e6:.0f} MB; SeaweedFS `weed server -s3` at {bed.endpoint}")
        rounds = [{"raidfile": run_kind(d, f"raidfile{i}", tree, None, []),
                   "s3": run_kind(d, f"s3{i}", tree, bed.new_bucket(), bed.pids)} for i in range(args.rounds)]
        results = {kind: {phase: {k: statistics.median(r[kind][phase][k] for r in rounds) for k in rounds[0][kind][phase]}
                          for phase in ("backup", "restore")} for kind in ("raidfile", "s3")}
        if args.rounds > 1:
            for i, r in enumerate(rounds):
                print(f"round {i}: backup_ratio={r['raidfile']['backup']['wall'] / r['s3']['backup']['wall']:.2f} "
                      f"restore_ratio={r['raidfile']['restore']['wall'] / r['s3']['restore']['wall']:.2f}")
        print(f"{'':<8} {'':<8} {'wall s':>7} {'MB/s':>6}  {'CPU s: client':>13} {'server':>6} {'weed':>5}"
              f"  {'requests':>8} {'req/file':>8}")
        for phase in ("backup", "restore"):
            for kind, r in results.items():
                p = r[phase]
                weed, req, per = ("-", "-", "-") if kind != "s3" else (
                    f"{p['weed']:.2f}", str(int(p["requests"])), f"{p['requests'] / nfiles:.3f}")
                print(f"{phase:<8} {kind:<8} {p['wall']:>7.2f} {nbytes / p['wall'] / 1e6:>6.1f}  {p['client']:>13.2f} "
                      f"{p['server']:>6.2f} {weed:>5}  {req:>8} {per:>8}")
        print(f"(CPU s: user + system seconds of each process while the phase ran, on {os.cpu_count()} shared cores; "
              f"load average {os.getloadavg()[0]:.2f})")
        backup_ratio = results["raidfile"]["backup"]["wall"] / results["s3"]["backup"]["wall"]
        restore_ratio = results["raidfile"]["restore"]["wall"] / results["s3"]["restore"]["wall"]
        per_file = results["s3"]["backup"]["requests"] / nfiles
        print(f"RESULT backup_ratio={backup_ratio:.2f} restore_ratio={restore_ratio:.2f} "
              f"requests_per_file={per_file:.2f}")
    finally:
        if bed is not None:
            bed.stop()
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
