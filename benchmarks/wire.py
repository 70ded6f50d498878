#!/usr/bin/env python3
"""Upload and download one big file object through a real `boxbox server` over loopback TLS.

Prints MB/s next to a raw `ssl` socket copy of the same bytes between two processes, in the
same run (medians of --reps), and the server's peak RSS. The last line is machine-readable:

    RESULT upload_ratio=X download_ratio=X server_rss_mib=X

(boxbox MB/s divided by raw TLS MB/s; the boxbox figures include the server's work: the
keyless layout check and the RAID write with parity on upload, the RAID read on download).
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
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
from boxbox.crypto.keys import Keys  # noqa: E402
from boxbox.objects.attributes import Attributes, FileType  # noqa: E402
from boxbox.objects.directory import FILE, make_entry  # noqa: E402
from boxbox.objects.file import encode_file  # noqa: E402
from boxbox.wire import tls  # noqa: E402
from boxbox.wire.client import Client  # noqa: E402
from boxbox.wire.transport import Connection  # noqa: E402

CHUNK = 1 << 20


class RandomSource:
    """`size` bytes of incompressible data, made 1 MiB at a time (memory stays flat)."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.block = os.urandom(CHUNK)

    def readinto(self, buf: memoryview) -> int:
        n = min(len(buf), self.left, CHUNK)
        buf[:n] = self.block[:n]
        self.left -= n
        self.block = self.block[1:] + self.block[:1]  # differ per chunk
        return n

    def read(self, n: int = -1) -> bytes:
        b = bytearray(min(CHUNK, self.left) if n < 0 else min(n, self.left))
        got = self.readinto(memoryview(b))
        return bytes(b[:got])


def make_pki(d: Path) -> None:
    authority.init_ca(d / "ca")
    authority.sign_server(d / "ca", "localhost", d / "server", alt_names=["127.0.0.1"])
    authority.sign_client(d / "ca", 1, d / "client")


def client_context(d: Path):  # type: ignore[no-untyped-def]
    c = d / "client"
    return tls.client_context(c / "client.crt", c / "client.key", c / "ca.crt")


# ------------------------------------------------------------------ raw TLS baseline
def _raw_server(d: Path, port_q: "mp.Queue[int]", mode: str, size: int, path: str) -> None:
    ctx = tls.server_context(d / "server" / "server.crt", d / "server" / "server.key", d / "ca" / "ca.crt")
    lst = socket.create_server(("127.0.0.1", 0))
    port_q.put(lst.getsockname()[1])
    raw, _ = lst.accept()
    s = ctx.wrap_socket(raw, server_side=True)
    if mode == "up":
        buf = bytearray(CHUNK)
        got = 0
        while got < size:
            n = s.recv_into(buf)
            if not n:
                break
            got += n
        s.sendall(b"k")
    else:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                s.sendall(chunk)
    s.close()


def raw_tls(d: Path, mode: str, size: int, path: str) -> float:
    q: mp.Queue[int] = mp.Queue()
    p = mp.Process(target=_raw_server, args=(d, q, mode, size, path))
    p.start()
    port = q.get()
    s = client_context(d).wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    t0 = time.perf_counter()
    if mode == "up":
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                s.sendall(chunk)
        s.recv(1)
    else:
        buf = bytearray(CHUNK)
        got = 0
        while got < size:
            n = s.recv_into(buf)
            if not n:
                break
            got += n
    elapsed = time.perf_counter() - t0
    s.close()
    p.join()
    return size / elapsed / 1e6


# ------------------------------------------------------------------ framing alone (no store)
def _frames_server(d: Path, port_q: "mp.Queue[int]", mode: str, path: str) -> None:
    ctx = tls.server_context(d / "server" / "server.crt", d / "server" / "server.key", d / "ca" / "ca.crt")
    lst = socket.create_server(("127.0.0.1", 0))
    port_q.put(lst.getsockname()[1])
    raw, _ = lst.accept()
    conn = Connection(ctx.wrap_socket(raw, server_side=True))
    if mode == "up":
        for _ in conn.stream_reader().chunks():
            pass
        conn.sock.sendall(b"k")
    else:
        with open(path, "rb") as f:
            conn.send_stream(f)
        conn.flush()
    conn.close()


def frames_only(d: Path, mode: str, size: int, path: str) -> float:
    """The same bytes as a boxbox stream to a peer that discards them: the protocol's own cost."""
    q: mp.Queue[int] = mp.Queue()
    p = mp.Process(target=_frames_server, args=(d, q, mode, path))
    p.start()
    port = q.get()
    conn = Connection(client_context(d).wrap_socket(socket.create_connection(("127.0.0.1", port)),
                                                    server_hostname="localhost"))
    t0 = time.perf_counter()
    if mode == "up":
        with open(path, "rb") as f:
            conn.send_stream(f)
        conn.flush()
        conn.sock.recv(1)
    else:
        got = sum(len(chunk) for chunk in conn.stream_reader().chunks())
        if got != size:
            raise SystemExit(f"framing test received {got} bytes, expected {size}")
    elapsed = time.perf_counter() - t0
    conn.close()
    p.join()
    return size / elapsed / 1e6


# ------------------------------------------------------------------ the store's own ceiling
def raid_write(d: Path, path: str, rep: int) -> float:
    """The same bytes written straight into a 3-directory disc set: what a store upload cannot beat."""
    from boxbox.raidfile import DiscSet

    dirs = [d / "raid-alone" / str(i) for i in range(3)]
    for x in dirs:
        x.mkdir(parents=True, exist_ok=True)
    ds = DiscSet("bench", dirs, 4096)
    size = os.path.getsize(path)
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        w = ds.create(f"obj{rep}")
        while chunk := f.read(256 << 10):
            w.write(chunk)
        w.commit()
    elapsed = time.perf_counter() - t0
    ds.delete(f"obj{rep}")
    return size / elapsed / 1e6


# ------------------------------------------------------------------ boxbox
def start_server(d: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = socket.create_server(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    discs = [d / f"disc{i}" for i in range(3)]
    for disc in discs:
        disc.mkdir(exist_ok=True)
    conf = d / "server.conf"
    conf.write_text(textwrap.dedent(f"""\
        [server]
        listen = 127.0.0.1
        port = {number}
        certificate = {d / 'server' / 'server.crt'}
        private_key = {d / 'server' / 'server.key'}
        ca_certificate = {d / 'ca' / 'ca.crt'}
        account_database = {d / 'accounts.db'}
        log_level = warning

        [discset 0]
        directories = {', '.join(str(x) for x in discs)}
        """))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "boxbox", "accounts", "--config", str(conf), "create", "1",
                    "--soft", "100G", "--hard", "100G"], check=True, env=env, stdout=subprocess.DEVNULL)
    args = [sys.executable, "-m", "boxbox", "server", "--config", str(conf), "--foreground"]
    if os.geteuid() == 0:
        args.append("--allow-root")
    proc = subprocess.Popen(args, env=env)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", number), timeout=1).close()
            return proc, number
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128 MiB instead of 512 MiB")
    ap.add_argument("--size-mib", type=int, default=None)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    size_mib = args.size_mib or (128 if args.quick else 512)
    with tempfile.TemporaryDirectory(prefix="boxbox-bench-") as tmp:
        d = Path(tmp)
        make_pki(d)
        keys = Keys.from_master(os.urandom(1024))
        attrs = Attributes(FileType.REGULAR, 0o644, 0, 0, time.time_ns())
        entry = make_entry(keys, 1, b"big.bin", 0, FILE, attrs)
        obj = d / "object"
        with open(obj, "wb") as sink:
            encode_file(keys, RandomSource(size_mib << 20), sink, container_id=1, name=b"big.bin", attributes=attrs,
                        size=size_mib << 20)
        size = obj.stat().st_size
        proc, port = start_server(d)
        up, down, raw_up, raw_down, raid, fr_up, fr_down = [], [], [], [], [], [], []
        try:
            for rep in range(args.reps):
                raid.append(raid_write(d, str(obj), rep))
                fr_up.append(frames_only(d, "up", size, str(obj)))
                fr_down.append(frames_only(d, "down", size, str(obj)))
                raw_up.append(raw_tls(d, "up", size, str(obj)))
                with Client.connect("127.0.0.1", port, client_context(d), server_hostname="localhost") as c:
                    c.login()
                    t0 = time.perf_counter()
                    with open(obj, "rb") as f:
                        oid = c.store_file(1, entry.sealed_name, f, mtime=entry.mtime_ns,
                                           attributes_hash=entry.attr_hash, attributes=entry.sealed_attributes)
                    up.append(size / (time.perf_counter() - t0) / 1e6)
                    raw_down.append(raw_tls(d, "down", size, str(obj)))
                    t0 = time.perf_counter()
                    got = sum(len(chunk) for chunk in c.get_object(oid).chunks())
                    down.append(size / (time.perf_counter() - t0) / 1e6)
                    if got != size:
                        raise SystemExit(f"downloaded {got} bytes, expected {size}")
                    c.delete_file(1, entry.sealed_name)
            rss = peak_rss_mib(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    med = statistics.median
    print(f"object: {size / 1e6:.0f} MB ({size_mib} MiB of random data, encoded), {args.reps} repetitions, medians")
    print(f"{'':<10}{'boxbox MB/s':>12}{'raw TLS MB/s':>14}{'ratio':>8}")
    print(f"{'upload':<10}{med(up):>12.0f}{med(raw_up):>14.0f}{med(up) / med(raw_up):>8.2f}")
    print(f"{'download':<10}{med(down):>12.0f}{med(raw_down):>14.0f}{med(down) / med(raw_down):>8.2f}")
    print(f"{'framing only':<10}{med(fr_up):>12.0f}{'':>14}{med(fr_up) / med(raw_up):>8.2f}  upload (no store)")
    print(f"{'framing only':<10}{med(fr_down):>12.0f}{'':>14}{med(fr_down) / med(raw_down):>8.2f}  download (no store)")
    print(f"{'raidfile write alone (3 directories), the ceiling for uploads':<62}{med(raid):>6.0f} MB/s; "
          f"boxbox upload reaches {med(up) / med(raid):.2f} of it")
    print(f"server peak RSS: {rss:.1f} MiB")
    print(f"RESULT upload_ratio={med(up) / med(raw_up):.2f} download_ratio={med(down) / med(raw_down):.2f} "
          f"server_rss_mib={rss:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
