"""Housekeeping and check over a big account: an unchanged pass, a pass after 1% changed, check and scrub.

    python3 benchmarks/store.py            # 100,000 objects in 5,000 directories
    python3 benchmarks/store.py --quick    # 10,000 objects in 500 directories, under a minute

The account is built on a 3-directory RAID disc set in a temp directory: 5% of the file
entries are old versions, and the usage is far under the soft limit (so a pass reads and
recounts but trims nothing; trimming costs one delete per object on top). File objects are
one real encoded object whose three stripe files are hard-linked under every object's name
(writing 100,000 raidfiles one by one, each fsynced, would take ~6 minutes here); the
directories are written normally. "1% changed" adds 1% new files across the directories and
bumps the change count as a writing session does, then times the pass (a full scan).
`check` reads every object whole (raidfile verifies both data stripes' checksums on the
way); `check --scrub` also verifies every stripe, parity included, before reading.
Medians of --repeat runs. Goals (issue 7): unchanged < 1 s per pass; check >= 5,000 objects/s.

Ends with `RESULT housekeep_unchanged_s=X housekeep_changed_s=X check_objects_per_s=X`.

    python3 benchmarks/store.py --uploads 3000 --repeat 5   # a session's cost per new object

`--uploads N` instead times the server side of a first backup: N pre-encoded small files (100 B to
16 KiB, in directories of 50) sent by a client in a child process over a socket pair (no TLS),
pipelined as the real client does, into a real store `Session` and `Dispatcher` in this process.
Its wall time and this process's CPU are the server's. Medians of --repeat rounds, each on a fresh
store; `--dir D` makes the stores in D and keeps them (deleting ~10,000 inodes slows the next
round's creates on ext4 without a journal; compare variants by alternating rounds into one D).
Ends with `RESULT uploads_wall_s=X uploads_server_cpu_s=X ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from boxbox.crypto.keys import Keys  # noqa: E402
from boxbox.objects.attributes import Attributes, FileType  # noqa: E402
from boxbox.objects.directory import DIR, FILE, OLD, Directory, Entry  # noqa: E402
from boxbox.objects.file import encode_file  # noqa: E402
from boxbox.raidfile import DiscSet  # noqa: E402
from boxbox.store.account import ROOT_DIRECTORY_ID, Store, object_key  # noqa: E402
from boxbox.store.accountdb import AccountDatabase  # noqa: E402
from boxbox.store.check import check_account  # noqa: E402
from boxbox.store.housekeep import housekeep  # noqa: E402
from boxbox.store.backend import ROOT  # noqa: E402

ACCOUNT = 0x1234
LINKS_PER_TEMPLATE = 50_000


class Bench:
    def __init__(self, root: Path, objects: int, directories: int) -> None:
        self.root = root
        dirs = [root / f"disc{i}" for i in range(3)]
        for d in dirs:
            d.mkdir()
        self.store = Store(AccountDatabase(root / "accounts.db"), {"0": DiscSet("0", dirs, 4096)})
        self.store.create_account(ACCOUNT, 1 << 40, 1 << 41, "0")
        self.backend = self.store.backend(ACCOUNT)
        keys = Keys.from_master(os.urandom(1024))
        sink = io.BytesIO()
        data = os.urandom(3000)
        encode_file(keys, io.BytesIO(data), sink, container_id=2, name=b"f",
                    attributes=Attributes(FileType.REGULAR, 0o644, 0, 0, 0), size=len(data))
        self.template_id = 2
        self._put(self.template_id, sink.getvalue())
        self.template = {i: root / f"template{i}.rf" for i in range(3)}
        for i in range(3):
            os.link(self._stripe(i, self.template_id), self.template[i])
        self.file_blocks = self.backend.usage_blocks(object_key(ACCOUNT, self.template_id))
        self.next_id = 3
        self.links = 0
        self.dir_ids: list[int] = []
        self.dirs: dict[int, Directory] = {}
        root_dir = Directory(ROOT_DIRECTORY_ID, 0)
        per_dir = (objects - directories) // directories
        for n in range(directories):
            dir_id = self._id()
            d = Directory(dir_id, ROOT_DIRECTORY_ID)
            for k in range(per_dir):
                d.entries.append(self._file(k))
            self.dirs[dir_id] = d
            self.dir_ids.append(dir_id)
            self._put(dir_id, d.serialize())
            root_dir.entries.append(Entry(dir_id, DIR, os.urandom(32)))
        self._put(ROOT_DIRECTORY_ID, root_dir.serialize())
        self.backend.delete(object_key(ACCOUNT, self.template_id))  # it is listed nowhere
        self.store.update_info(ACCOUNT, last_object_id=self.next_id)
        self.objects = directories * (per_dir + 1) + 1
        housekeep(self.store, ACCOUNT, force=True)  # correct counts and a state: the steady state

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _stripe(self, disc: int, object_id: int) -> Path:
        return self.root / f"disc{disc}" / ROOT / f"{object_key(ACCOUNT, object_id)}.rf"

    def _file(self, k: int) -> Entry:
        object_id = self._id()
        self.links += 1
        if self.links % LINKS_PER_TEMPLATE == 0:  # a filesystem allows ~65,000 links to one inode
            for i in range(3):
                fresh = self.root / f"template{i}-{self.links}.rf"
                shutil.copyfile(self.template[i], fresh)
                self.template[i] = fresh
        for i in range(3):
            path = self._stripe(i, object_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(self.template[i], path)
        return Entry(object_id, FILE | OLD if k % 20 == 0 else FILE, os.urandom(32), 0, self.file_blocks)

    def _put(self, object_id: int, data: bytes) -> None:
        put = self.backend.put(object_key(ACCOUNT, object_id))
        put.write(data)
        put.commit()

    def change(self, fraction: float) -> None:
        """Add fraction x objects as new files spread over the directories, as a session would."""
        count = max(1, int(self.objects * fraction))
        touched = set()
        for n in range(count):
            dir_id = self.dir_ids[(n * 7919) % len(self.dir_ids)]
            self.dirs[dir_id].entries.append(self._file(1))
            touched.add(dir_id)
        for dir_id in touched:
            self._put(dir_id, self.dirs[dir_id].serialize())
        info = self.store.read_info(ACCOUNT)
        self.store.update_info(ACCOUNT, change_count=info.change_count + 1, last_object_id=self.next_id)
        self.objects += count


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def upload_round(count: int, parent: str | None) -> tuple[float, float, float, float]:
    """One session of `count` pipelined uploads: wall, the server's user and system CPU, and the CPU of child
    processes the server reaped meanwhile (raidfile helpers), in seconds."""
    import random
    import resource
    import socket

    from boxbox.objects.directory import make_entry
    from boxbox.store.session import Session
    from boxbox.wire import messages as m
    from boxbox.wire.client import Client
    from boxbox.wire.commands import Dispatcher
    from boxbox.wire.transport import Connection

    keys = Keys.from_master(os.urandom(1024))
    rng = random.Random(11)
    attrs = Attributes(FileType.REGULAR, 0o644, 0, 0, 0)
    per_dir = 50
    files = []  # (directory id, its entry in the directory, the encoded object)
    for n in range(count):
        sink = io.BytesIO()
        data = rng.randbytes(rng.choice((100, 1_000, 4_000, 16_000)))
        dir_id = ROOT_DIRECTORY_ID + 1 + n // per_dir * (per_dir + 1)  # ids are given out in order: a directory, its files
        name = b"f%d" % n
        encode_file(keys, io.BytesIO(data), sink, container_id=dir_id, name=name, attributes=attrs, size=len(data))
        files.append((dir_id, make_entry(keys, dir_id, name, 0, FILE, attrs), sink.getvalue()))
    with contextlib.ExitStack() as stack:
        # with --dir the store is kept (see the module docstring)
        tmp = tempfile.mkdtemp(prefix="boxbox-upload-bench-", dir=parent) if parent else \
            stack.enter_context(tempfile.TemporaryDirectory(prefix="boxbox-upload-bench-"))
        dirs = [Path(tmp) / f"disc{i}" for i in range(3)]
        for d in dirs:
            d.mkdir()
        store = Store(AccountDatabase(Path(tmp) / "accounts.db"), {"0": DiscSet("0", dirs, 4096)})
        store.create_account(ACCOUNT, 1 << 40, 1 << 41, "0")
        a, b = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the client
            code = 1
            try:
                b.close()
                client = Client(Connection(a))
                client.hello()
                client.login()
                made: set[int] = set()
                replies = []
                for dir_id, entry, obj in files:
                    if dir_id not in made:
                        made.add(dir_id)
                        replies.append(client.submit(m.CreateDirectory(
                            ROOT_DIRECTORY_ID, 0, make_entry(keys, ROOT_DIRECTORY_ID, b"d%d" % dir_id, 0, FILE, None).sealed_name,
                            b"")))
                    replies.append(client.submit(m.StoreFile(dir_id, entry.mtime_ns, entry.attr_hash, 0,
                                                             entry.sealed_name, entry.sealed_attributes), upload=[obj]))
                client.finish()
                ids = [p.result().object_id for p in replies]
                if ids != list(range(ROOT_DIRECTORY_ID + 1, ROOT_DIRECTORY_ID + 1 + len(ids))):
                    raise SystemExit(f"unexpected ids {ids[:3]}...")
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        a.close()
        before = resource.getrusage(resource.RUSAGE_SELF)
        helpers = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        Dispatcher(Connection(b), Session(store, ACCOUNT)).run()
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        helped = resource.getrusage(resource.RUSAGE_CHILDREN)  # helpers reaped at the session's end, not the client
        b.close()
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise SystemExit(f"the upload client failed (status {status})")
        return (wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime,
                helped.ru_utime + helped.ru_stime - helpers.ru_utime - helpers.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 objects (under a minute)")
    parser.add_argument("--objects", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--uploads", type=int, metavar="N", help="time a session of N new small files instead")
    parser.add_argument("--dir", help="with --uploads: make the stores here and keep them")
    args = parser.parse_args()
    if args.uploads:
        rounds = [upload_round(args.uploads, args.dir) for _ in range(args.repeat)]
        wall, user, system, helper = (statistics.median(r[i] for r in rounds) for i in range(4))
        print("rounds (wall, server user + system CPU, helper CPU):",
              ", ".join(f"{w:.2f} ({u:.2f} + {s:.2f}, {h:.2f})" for w, u, s, h in rounds))
        print(f"RESULT uploads_wall_s={wall:.3f} uploads_server_cpu_s={user + system:.3f} "
              f"uploads_server_user_s={user:.3f} uploads_server_system_s={system:.3f} uploads_helper_cpu_s={helper:.3f}")
        return 0
    objects = args.objects or (10_000 if args.quick else 100_000)
    directories = max(1, objects // 20)
    with tempfile.TemporaryDirectory(prefix="boxbox-store-bench-") as tmp:
        started = time.perf_counter()
        b = Bench(Path(tmp), objects, directories)
        print(f"account of {b.objects} objects in {directories} directories built in "
              f"{time.perf_counter() - started:.1f} s")
        unchanged = []
        for _ in range(max(5, args.repeat)):
            unchanged.append(timed(lambda: housekeep(b.store, ACCOUNT)))
        result = housekeep(b.store, ACCOUNT)
        assert result.skipped == "unchanged since the last pass", result.summary()
        changed = []
        for _ in range(args.repeat):
            b.change(0.01)
            changed.append(timed(lambda: housekeep(b.store, ACCOUNT)))
        checks, scrubs = [], []
        for _ in range(args.repeat):
            for scrub, times in ((False, checks), (True, scrubs)):
                report = check_account(b.store, ACCOUNT, scrub=scrub)
                assert report.errors == 0, [str(p) for p in report.problems[:5]]
                times.append(report.seconds)
        hu, hc = statistics.median(unchanged), statistics.median(changed)
        ck, sc = statistics.median(checks), statistics.median(scrubs)
        rate = report.objects / ck
        print()
        print("| pass | seconds (median) | objects/s |")
        print("|---|---|---|")
        print(f"| housekeeping, nothing changed | {hu:.4f} | {b.objects / hu:,.0f} |")
        print(f"| housekeeping, 1% changed | {hc:.2f} | {b.objects / hc:,.0f} |")
        print(f"| check: every object read (data stripes' CRCs) + tree | {ck:.2f} | {rate:,.0f} |")
        print(f"| check --scrub: every stripe verified first, parity too | {sc:.2f} | {report.objects / sc:,.0f} |")
        print()
        print(f"goals: unchanged < 1 s: {'met' if hu < 1 else 'MISSED'}; check >= 5,000 objects/s: "
              f"{'met' if rate >= 5000 else 'MISSED'}")
        print(f"RESULT housekeep_unchanged_s={hu:.4f} housekeep_changed_s={hc:.3f} check_objects_per_s={rate:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
