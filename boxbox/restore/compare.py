"""Compare a remote tree with a local one: quickly against block checksums, or fully by download.

Quick mode downloads only each file's block index (a few dozen bytes per block) and hashes
the local file in the same blocks with the same strong hash: a changed byte anywhere changes
a block's digest, so no file data crosses the network. Full mode downloads, verifies and
decrypts every file and compares it byte for byte as it streams. Both also compare type,
permission bits, mtime and symlink targets, and report names present on one side only.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from boxbox.errors import BoxboxError
from boxbox.objects.attributes import Attributes, FileType
from boxbox.objects.file import decode_file, open_index
from boxbox.restore.names import describe
from boxbox.restore.progress import Progress
from boxbox.restore.remote import Remote, RemoteEntry
from boxbox.restore.restore import WINDOW, Options, Restore
from boxbox.rolling.checksum import HASHES, strong_function
from boxbox.wire import messages as m

READ_CHUNK = 1 << 20
_LOCAL_TYPES = {stat.S_IFREG: FileType.REGULAR, stat.S_IFDIR: FileType.DIRECTORY, stat.S_IFLNK: FileType.SYMLINK,
                stat.S_IFIFO: FileType.FIFO, stat.S_IFCHR: FileType.CHAR_DEVICE, stat.S_IFBLK: FileType.BLOCK_DEVICE,
                stat.S_IFSOCK: FileType.SOCKET}


@dataclass
class Comparison:
    files: int = 0
    bytes: int = 0
    differences: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 same, 1 different, 2 could not compare everything."""
        return 2 if self.errors else 1 if self.differences else 0

    def line(self) -> str:
        return (f"compared {self.files} files: {len(self.differences)} differences, {len(self.errors)} errors")


class _CompareSink:
    """A decode sink that checks each clear block against the local file instead of writing it."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.same = True

    def write(self, data: bytes | memoryview) -> int:
        if self.same and self.f.read(len(data)) != data:
            self.same = False
        return len(data)


def compare(remote: Remote, chain: list[tuple[bytes, int]], local: str | os.PathLike[str], *, quick: bool = True,
            progress: Progress | None = None) -> Comparison:
    """Compare the remote directory at the end of `chain` with local directory `local`."""
    progress = progress or Progress(None)
    result = Comparison()
    walker = Restore(remote, Options(continue_on_error=True), progress)
    name, dir_id = chain[-1]
    walker.walk(dir_id, name)
    result.errors += walker.summary.errors
    root = os.fsencode(local)
    if not os.path.isdir(root):
        result.errors.append(f"{os.fsdecode(root)}: not a local directory")
        return result

    def local_path(rel: bytes) -> bytes:
        return os.path.join(root, rel) if rel else root

    for d in walker.dirs:
        try:
            here = set(os.listdir(local_path(d.path)))
        except OSError as e:
            result.differences.append(f"{describe(d.path)}: local directory missing ({e.strerror})")
            continue
        for extra in sorted(here - d.names):
            result.differences.append(f"{describe(os.path.join(d.path, extra))}: only on local disc")
        if d.attrs is not None and d.path:
            _compare_meta(result, d.path, local_path(d.path), d.attrs, check_mtime=False)
    for i, e in walker.nodes:
        rel = os.path.join(walker.dirs[i].path, e.name)
        if e.attributes is not None:
            _compare_meta(result, rel, local_path(rel), e.attributes)
    jobs = []
    for i, e in walker.files:
        rel = os.path.join(walker.dirs[i].path, e.name)
        if e.attributes is None or _compare_meta(result, rel, local_path(rel), e.attributes):
            jobs.append((walker.dirs[i].dir_id, e, rel))
    progress.total_files = len(jobs)
    _contents(remote, jobs, local_path, quick, result, progress)
    progress.clear()
    result.seconds = progress.elapsed()
    return result


def _compare_meta(result: Comparison, rel: bytes, path: bytes, attrs: Attributes, check_mtime: bool = True) -> bool:
    """Type, mode, mtime, link target; True when the content still needs comparing."""
    try:
        st = os.lstat(path)
    except OSError as e:
        result.differences.append(f"{describe(rel)}: missing on local disc ({e.strerror})")
        return False
    kind = _LOCAL_TYPES.get(stat.S_IFMT(st.st_mode))
    if kind is not attrs.file_type:
        result.differences.append(f"{describe(rel)}: local is a {kind.name.lower() if kind else 'unknown'}, "
                                  f"stored is a {attrs.file_type.name.lower()}")
        return False
    if kind is FileType.SYMLINK:
        if os.readlink(path) != attrs.symlink_target:
            result.differences.append(f"{describe(rel)}: symlink target differs")
        return False
    if stat.S_IMODE(st.st_mode) != attrs.mode:
        result.differences.append(f"{describe(rel)}: mode {stat.S_IMODE(st.st_mode):04o}, stored {attrs.mode:04o}")
    if check_mtime and st.st_mtime_ns != attrs.mtime_ns:
        result.differences.append(f"{describe(rel)}: modification time differs")
    return kind is FileType.REGULAR


def _contents(remote: Remote, jobs: list[tuple[int, RemoteEntry, bytes]], local_path: Any, quick: bool,
              result: Comparison, progress: Progress) -> None:
    """Pipelined: WINDOW index (or file) requests in flight while the current one is checked."""
    client = remote.client
    queue: deque[tuple[int, RemoteEntry, bytes, Any]] = deque()
    it = iter(jobs)

    def refill() -> None:
        while len(queue) < WINDOW and (job := next(it, None)) is not None:
            dir_id, e, rel = job
            request = m.GetBlockIndexByID(e.object_id) if quick else m.GetFile(dir_id, e.object_id)
            queue.append((dir_id, e, rel, client.submit(request, download=True)))

    refill()
    while queue:
        dir_id, e, rel, pending = queue.popleft()
        refill()
        label = describe(rel)
        try:
            with open(local_path(rel), "rb") as f:
                _, stream = pending.result()
                if quick:
                    index = open_index(remote.keys, stream.read(), label, container_id=dir_id, name=e.name)
                    same = _same_blocks(f, index)
                else:
                    sink = _CompareSink(f)
                    decode_file(remote.keys, stream, sink, label=label, container_id=dir_id, name=e.name)
                    same = sink.same and not f.read(1)
                result.bytes += f.tell()
        except BoxboxError as err:
            result.errors.append(f"{label}: {err}")
            continue
        except OSError as err:
            result.errors.append(f"{label}: {err.strerror}")
            continue
        result.files += 1
        if not same:
            result.differences.append(f"{label}: contents differ")
        progress.update(result.files, result.bytes)


def _same_blocks(f: Any, index: Any) -> bool:
    """Hash the local file in the index's block sizes; stop at the first differing block."""
    strong = strong_function(HASHES[index.hash_id])
    size = os.fstat(f.fileno()).st_size
    if size != index.size:
        return False
    for entry in index.entries:
        if strong(f.read(entry.clear_size)) != entry.strong:
            return False
    return True
