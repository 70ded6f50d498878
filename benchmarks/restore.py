#!/usr/bin/env python3
"""Restore a backed-up tree through a real `boxbox server` over loopback TLS, against `cp -a`.

The tree (default 600 MB in 20,000 files: 300 MB in 10 large files in `big/`, 300 MB in
small files spread over directories; `--quick` 160 MB in 10 large files and 30 MB in 2,000
small ones) is backed up once with `boxbox client --once` (not timed), then, alternating in
the same run, restored with `boxbox query restore` (a whole process: start-up, TLS, listing,
download, verify, decrypt, write, the final `sync()`) and copied with `cp -a`, both for the
whole tree and for `big/` alone. Page cache warm for both. The quick run's large files used
to be 3 MB each: a restore of them was then mostly the ~0.2 s process start, against 13 ms
for `cp -a`, so its ratio measured start-up, not large files; the start-up (`query ls` of
`big/`: interpreter, keys, TLS, login, one listing) is now timed on its own and printed. Every run writes a new directory (all removed at the end): deleting the last
run's output first made every file creation scan the inodes freed within the last minute
(ext4's `recently_deleted`, a third of the restore's CPU in a `perf` profile, and the same
for `cp -a`), so the order of runs decided the figures. Before each run `sync` (not timed)
writes back what earlier runs left dirty, so no run is throttled by, or (boxbox ends with
one `sync()`) waits for, another's writeback. A restore ends with its data on the disc
(`sync()`), `cp -a` does not: each `cp -a` is followed by a timed `sync`, and both ratios
are reported (`cp -a` alone, the historical one, and `cp -a` + `sync`, the same end state).
Medians of --reps (5 with --quick); CPU seconds (the
command's, plus the server's for boxbox) are printed beside wall time, since on a shared
machine wall time is mostly waiting for a core. The ceilings of this design are measured in
the same run: one TLS stream over loopback, AES-256-GCM open on one core at the block sizes
of the tree (decode no longer hashes clear data), and writing new files into the page cache.
The last line is machine-readable:

    RESULT tree_ratio=X large_ratio=X files_per_s=X tree_ratio_synced=X large_ratio_synced=X

(ratios: boxbox MB/s divided by `cp -a` MB/s, or by `cp -a` + `sync` MB/s; files_per_s:
boxbox, whole tree).
"""

from __future__ import annotations

import argparse
import os
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
from boxbox.crypto.keys import create_keys_file  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def boxbox(*args: str) -> list[str]:
    return [sys.executable, "-m", "boxbox", *args]


def make_tree(root: Path, big_total: int, small_total: int, files: int, seed: bytes) -> tuple[int, int]:
    """`big_total` bytes in 10 large files under big/, `small_total` in small files (100 per directory).

    Contents: random bytes for the large files (stored raw), and a mix of random and
    repetitive text for the small ones (some compress, some do not), like a home directory.
    """
    big = root / "big"
    big.mkdir(parents=True)
    n_big = 10
    chunk = os.urandom(1 << 20)
    for i in range(n_big):
        with open(big / f"large{i}.bin", "wb") as f:
            left = big_total // n_big
            while left:
                piece = chunk[:min(left, len(chunk))]
                f.write(piece)
                left -= len(piece)
                chunk = chunk[7:] + chunk[:7]
    n_small = files - n_big
    each = small_total // n_small
    text = (b"the quick brown fox jumps over the lazy dog " + seed) * (each // 40 + 1)
    pool = os.urandom(each * 64)
    for i in range(n_small):
        d = root / "small" / f"d{i // 100:03d}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        size = each // 2 + (i * 7919) % each  # varied sizes around the mean
        data = text[:size] if i % 2 else pool[(i * 4099) % (len(pool) - size):][:size]
        (d / f"f{i:05d}.dat").write_bytes(data)
    return n_big + n_small, sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def start_server(d: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    discs = [d / f"disc{i}" for i in range(3)]
    for disc in discs:
        disc.mkdir()
    conf = d / "server.conf"
    conf.write_text(textwrap.dedent(f"""\
        [server]
        listen = 127.0.0.1
        port = {port}
        certificate = {d / 'server' / 'server.crt'}
        private_key = {d / 'server' / 'server.key'}
        ca_certificate = {d / 'ca' / 'ca.crt'}
        account_database = {d / 'accounts.db'}
        log_level = warning

        [discset 0]
        directories = {', '.join(str(x) for x in discs)}
        """))
    subprocess.run(boxbox("accounts", "--config", str(conf), "create", "1", "--soft", "100G", "--hard", "100G"),
                   check=True, env=ENV, stdout=subprocess.DEVNULL)
    args = boxbox("server", "--config", str(conf), "--foreground")
    if os.geteuid() == 0:
        args.append("--allow-root")
    proc = subprocess.Popen(args, env=ENV)
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start")


def client_conf(d: Path, port: int, tree: Path, certs: Path | None = None) -> Path:
    """A snapshot-mode client config in `d` backing up `tree`; certificates from `certs` (default d/client)."""
    create_keys_file(d / "keys.dat")
    conf = d / "client.conf"
    c = certs or d / "client"
    conf.write_text(textwrap.dedent(f"""\
        [client]
        server = localhost
        port = {port}
        account = 1
        certificate = {c / 'client.crt'}
        private_key = {c / 'client.key'}
        ca_certificate = {c / 'ca.crt'}
        keys_file = {d / 'keys.dat'}
        data_directory = {d / 'state'}
        automatic_backup = no
        log_level = warning

        [location home]
        path = {tree}
        """))
    return conf


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (the server)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(cmd: list[str], server_pid: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command plus the server's while it ran)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = process_cpu(server_pid)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=ENV, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu + process_cpu(server_pid) - server_before


def tls_loopback(d: Path, total: int = 128 << 20, chunk: int = 256 << 10) -> tuple[float, float]:
    """(wall MB/s, receiver CPU MB/s) of one TLS 1.3 stream over loopback with boxbox's contexts.

    The sender is a forked child writing `chunk`-sized pieces; the receiver reads them with
    `recv_into` into one buffer, the least any restore can do with the bytes.
    """
    from boxbox.wire import tls

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            ctx = tls.server_context(d / "server" / "server.crt", d / "server" / "server.key", d / "ca" / "ca.crt")
            conn, _ = srv.accept()
            s = ctx.wrap_socket(conn, server_side=True)
            data = os.urandom(chunk)
            for _ in range(total // chunk):
                s.sendall(data)
            s.recv(1)
        finally:
            os._exit(0)
    srv.close()
    ctx = tls.client_context(d / "client" / "client.crt", d / "client" / "client.key", d / "client" / "ca.crt")
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost") as s:
        buf = memoryview(bytearray(chunk))
        got = 0
        t0, c0 = time.perf_counter(), time.process_time()
        while got < total:
            got += s.recv_into(buf)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        s.sendall(b"x")
    os.waitpid(pid, 0)
    return total / wall / 1e6, total / cpu / 1e6


def aead_open(block: int, total: int = 64 << 20) -> float:
    """MB/s of AES-256-GCM decrypt per block on one core: the crypto every restored byte costs."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(AESGCM.generate_key(256))
    nonce = os.urandom(12)
    sealed = aead.encrypt(nonce, os.urandom(block), b"ad")
    decrypt = aead.decrypt
    t0 = time.process_time()
    for _ in range(total // block):
        decrypt(nonce, sealed, b"ad")
    return total / (time.process_time() - t0) / 1e6


def page_cache_write(d: Path, total: int = 128 << 20, chunk: int = 256 << 10) -> float:
    """MB/s (wall) of writing a new file into the page cache in `chunk` pieces: what any restore
    or copy pays per byte (here the kernel's copy into new page-cache pages was ~40% of a
    large-file restore's samples in `perf`)."""
    data = os.urandom(chunk)
    path = d / "page-cache-probe"
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for _ in range(total // chunk):
            os.write(fd, data)
    finally:
        os.close(fd)
    wall = time.perf_counter() - t0
    path.unlink()
    return total / wall / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="190 MB in 2,010 files (about a minute)")
    ap.add_argument("--reps", type=int, help="runs of each, median reported (default 3; 5 with --quick)")
    ap.add_argument("--dir", help="work directory (default: a new temporary one)")
    args = ap.parse_args()
    big_total, small_total, files = (160_000_000, 30_000_000, 2_000) if args.quick else \
        (300_000_000, 300_000_000, 20_000)
    reps = args.reps or (5 if args.quick else 3)
    d = Path(tempfile.mkdtemp(prefix="boxbox-restore-bench-", dir=args.dir))
    proc = None
    try:
        authority.init_ca(d / "ca")
        authority.sign_server(d / "ca", "localhost", d / "server", alt_names=["127.0.0.1"])
        authority.sign_client(d / "ca", 1, d / "client")
        tree = d / "tree"
        nfiles, nbytes = make_tree(tree, big_total, small_total, files, b"boxbox")
        big_bytes = sum(p.stat().st_size for p in (tree / "big").iterdir())
        proc, port = start_server(d)
        conf = client_conf(d, port, tree)
        t, _ = timed(boxbox("client", "--config", str(conf), "--once"), proc.pid)
        print(f"tree: {nfiles} files, {nbytes / 1e6:.0f} MB ({big_bytes / 1e6:.0f} MB in 10 large files); "
              f"backed up in {t:.1f} s")
        keys = ("boxbox tree", "cp tree", "cp+sync tree", "boxbox large", "cp large", "cp+sync large", "start-up")
        results: dict[str, list[float]] = {k: [] for k in keys}
        cpus: dict[str, list[float]] = {k: [] for k in results}
        outs = d / "outs"
        outs.mkdir()
        query = boxbox("query", "--config", str(conf), "--quiet")
        for rep in range(reps):
            for name, cmd in (("boxbox tree", [*query, "restore", "/home"]), ("cp tree", ["cp", "-a", str(tree)]),
                              ("boxbox large", [*query, "restore", "/home/big"]),
                              ("cp large", ["cp", "-a", str(tree / "big")])):
                os.sync()
                wall, cpu = timed([*cmd, str(outs / f"{name.replace(' ', '-')}-{rep}")], proc.pid)
                results[name].append(wall)
                cpus[name].append(cpu)
                if name.startswith("cp"):  # the same end state as a restore: the data on the disc
                    t0 = time.perf_counter()
                    os.sync()
                    synced = name.replace("cp", "cp+sync")
                    results[synced].append(wall + time.perf_counter() - t0)
                    cpus[synced].append(cpu)
            wall, cpu = timed([*query, "ls", "/home/big"], proc.pid)
            results["start-up"].append(wall)
            cpus["start-up"].append(cpu)
        tls_runs = [tls_loopback(d) for _ in range(3)]
        tls_wall = statistics.median(w for w, _ in tls_runs)
        tls_cpu = statistics.median(c for _, c in tls_runs)
        from boxbox.rolling.layout import block_size_for

        big_block = block_size_for(big_bytes // 10)
        crypto = {b: statistics.median(aead_open(b) for _ in range(3)) for b in sorted({4096, big_block})}
        page_cache = statistics.median(page_cache_write(d) for _ in range(3))
        med = {k: statistics.median(v) for k, v in results.items()}
        cpu_med = {k: statistics.median(v) for k, v in cpus.items()}
        rows = [("whole tree", nbytes, nfiles, "tree"), ("large files", big_bytes, 10, "large")]
        print(f"{'':<12} {'':<8} {'wall s':>8} {'MB/s':>8} {'files/s':>9} {'CPU s':>7}")
        for label, size, count, key in rows:
            for who in ("boxbox", "cp", "cp+sync"):
                s = med[f"{who} {key}"]
                print(f"{label:<12} {who:<8} {s:>8.2f} {size / s / 1e6:>8.1f} {count / s:>9.0f} "
                      f"{cpu_med[f'{who} {key}']:>7.2f}")
        print(f"{'start-up':<12} {'boxbox':<8} {med['start-up']:>8.2f} {'':>8} {'':>9} {cpu_med['start-up']:>7.2f}"
              "   (query ls big/: interpreter, keys, TLS, login, one listing)")
        print("(CPU s: the command's user + system time, plus the server's for boxbox; on a busy machine "
              "wall time is mostly waiting for a core)")
        cp_large = big_bytes / med["cp large"] / 1e6
        print(f"ceilings (this run): one TLS stream over loopback {tls_wall:.0f} MB/s (receiver CPU "
              f"{tls_cpu:.0f} MB/s); AES-256-GCM open on one core " +
              ", ".join(f"{v:.0f} MB/s at {b // 1024} KiB blocks" for b, v in crypto.items()) +
              f"; new files into the page cache {page_cache:.0f} MB/s")
        # the restoring process does all three on one core, one after the other
        client = 1 / (1 / tls_cpu + 1 / crypto[big_block] + 1 / page_cache)
        best = min(tls_wall, client)
        verdict = "out of reach" if best < 0.6 * cp_large else "not excluded by these ceilings"
        print(f"large files: cp -a {cp_large:.0f} MB/s, 0.6x of it {0.6 * cp_large:.0f} MB/s; one client core can "
              f"receive, open and write {client:.0f} MB/s, so at most {best / cp_large:.2f}x: the goal is {verdict}")
        ratio = {f"{key}_ratio{tail}": med[f"{cp} {key}"] / med[f"boxbox {key}"]
                 for key in ("tree", "large") for cp, tail in (("cp", ""), ("cp+sync", "_synced"))}
        print(f"RESULT tree_ratio={ratio['tree_ratio']:.2f} large_ratio={ratio['large_ratio']:.2f} "
              f"files_per_s={nfiles / med['boxbox tree']:.0f} tree_ratio_synced={ratio['tree_ratio_synced']:.2f} "
              f"large_ratio_synced={ratio['large_ratio_synced']:.2f}")
    finally:
        if proc is not None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(30)
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
