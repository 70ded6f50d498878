"""Writing restored objects under a target directory without ever leaving it.

Every name and attribute comes from the store, which may be hostile, so:

- a name is exactly one path component: not empty, not `.` or `..`, no `/`, no NUL
  (`check_name`). Anything else is refused and reported, never "cleaned up";
- every write is relative to a directory descriptor opened O_NOFOLLOW | O_DIRECTORY one
  component at a time from the target, so a symlink planted by an earlier entry is never
  followed, and `..` can never be spelled;
- a file is created without a name (O_TMPFILE), filled and given its metadata through its
  descriptor, then linked to its real name through /proc/self/fd (link(2) neither follows
  nor replaces what is there). Where the file system has no O_TMPFILE it is created
  O_CREAT | O_EXCL | O_NOFOLLOW under a temporary name instead, linked the same way, and
  the temporary name removed. A half-written file never carries a real name: that is what
  makes `--resume` trustworthy;
- a restored hard link is link(2) from one name to another, both relative to directory
  descriptors, without AT_SYMLINK_FOLLOW: a symlink in the source's place is linked as
  itself, never followed.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import secrets
import stat
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

from boxbox.errors import IntegrityError, UsageError
from boxbox.objects.attributes import Attributes, FileType

#: temporary files are named TEMP_PREFIX + random hex + TEMP_SUFFIX; `--resume` removes strays
TEMP_PREFIX = b".boxbox-restore."
TEMP_SUFFIX = b".tmp"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: An unnamed temp file changes its directory once (the link) instead of three times (create,
#: link, unlink), and the helper thread that creates temps ahead then no longer takes the
#: directory's lock: with it, 15% of a restore's samples on the test box were the two threads
#: spinning on that lock (perf, full-scale vs_boxbackup restore). Nothing to clean up
#: after a kill: the kernel frees an unlinked inode.
TMPFILE_FLAGS = os.O_RDWR | getattr(os, "O_TMPFILE", 0) | os.O_CLOEXEC  # readable: see _relink
HAVE_TMPFILE = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
#: what open(O_TMPFILE) fails with where the kernel (EISDIR, EINVAL) or file system (EOPNOTSUPP) lacks it
NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
_NODE_TYPES = {FileType.FIFO: stat.S_IFIFO, FileType.CHAR_DEVICE: stat.S_IFCHR,
               FileType.BLOCK_DEVICE: stat.S_IFBLK, FileType.SOCKET: stat.S_IFSOCK}
_STAT_TYPES = {FileType.REGULAR: stat.S_IFREG, FileType.DIRECTORY: stat.S_IFDIR, FileType.SYMLINK: stat.S_IFLNK,
               **_NODE_TYPES}


def is_temp_name(name: bytes) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def open_dir(parent_fd: int, name: bytes) -> int:
    """A descriptor for directory `name` under `parent_fd`; a symlink there is refused (ELOOP)."""
    return os.open(name, DIR_FLAGS, dir_fd=parent_fd)


def open_target(path: str | os.PathLike[str], resume: bool) -> int:
    """The restore target: created empty, or (resuming) opened as it is; anything else is refused.

    The user's own path may go through symlinks (it is theirs); nothing below it may.
    """
    path = Path(path)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not resume:
            raise UsageError(f"restore target {path} already exists",
                             hint="choose a new directory, or add --resume to continue an interrupted restore") from None
    except OSError as e:
        raise UsageError(f"cannot create restore target {path}: {e.strerror}") from None
    try:
        return os.open(path, DIR_FLAGS)
    except OSError as e:
        raise UsageError(f"cannot open restore target {path}: {e.strerror}") from None


#: a temporary file hands every WRITEBACK_BYTES it writes to the disc's writeback at once
#: (posix_fadvise DONTNEED starts it without waiting, as raidfile's writer does)
WRITEBACK_BYTES = 4 << 20
HAVE_FADVISE = hasattr(os, "posix_fadvise")


class TempFile:
    """A temporary file being filled: unbuffered, since decode hands over whole batches.

    `decode_file` writes up to 256 KiB at a time (a small file in one piece), so a buffer
    would only add a copy, and `open(fd, "wb", buffering=1 MiB)` allocated and faulted in
    a 1 MiB buffer for every file.
    """

    __slots__ = ("fd", "written", "kicked")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.written = 0  # bytes written so far
        self.kicked = 0  # bytes handed to writeback so far

    def write(self, data: bytes | memoryview) -> int:
        done = self._write(data)
        self.written += done
        if self.written - self.kicked >= WRITEBACK_BYTES and HAVE_FADVISE:
            # start the disc on what is written, so the final sync() waits for the tail only
            os.posix_fadvise(self.fd, self.kicked, self.written - self.kicked, os.POSIX_FADV_DONTNEED)
            self.kicked = self.written
        return done

    def _write(self, data: bytes | memoryview) -> int:
        done = os.write(self.fd, data)
        if done < len(data):  # a short write (a signal, a nearly full disc): finish it, or raise
            with memoryview(data) as view:
                while done < len(view):
                    n = os.write(self.fd, view[done:])
                    if not n:  # never for a regular file with bytes to write; do not spin if it happens
                        raise OSError(errno.EIO, "write wrote nothing")
                    done += n
        return done

    def fileno(self) -> int:
        return self.fd

    def flush(self) -> None:
        """Nothing is buffered."""

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class Writer:
    """Creates files, directories and special files under directory descriptors, with metadata."""

    def __init__(self, as_root: bool | None = None) -> None:
        self.as_root = os.geteuid() == 0 if as_root is None else as_root
        #: one line per kind of thing that could not be restored as it was (not per file)
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        #: temporary names: a random part per restore and a counter (cheaper than random per file)
        self._run = secrets.token_hex(4).encode()
        self._serial = 0
        self._ahead: ThreadPoolExecutor | None = None
        self._unnamed = HAVE_TMPFILE  # False once the target's file system refuses O_TMPFILE

    def warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            self.warnings.append(message)

    # ------------------------------------------------------------ directories
    def make_dir(self, parent_fd: int, name: bytes, resume: bool) -> int:
        """Create directory `name` (0700 until its metadata is applied at the end); open it."""
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            if not resume:
                raise
        return open_dir(parent_fd, name)

    # ------------------------------------------------------------ regular files
    def _temp_name(self) -> bytes:
        self._serial += 1
        return b"%s%s%08x%s" % (TEMP_PREFIX, self._run, self._serial, TEMP_SUFFIX)

    def create_temp(self, dir_fd: int) -> tuple[TempFile, bytes]:
        """A new, empty temporary file in `dir_fd` and its name: b"" for an unnamed one, else never a
        name that was there."""
        if self._unnamed:
            try:
                return TempFile(os.open(".", TMPFILE_FLAGS, 0o600, dir_fd=dir_fd)), b""
            except OSError as e:
                if e.errno not in NO_TMPFILE:
                    raise
                self._unnamed = False
        while True:
            tmp = self._temp_name()
            try:
                fd = os.open(tmp, FILE_FLAGS, 0o600, dir_fd=dir_fd)
            except FileExistsError:
                continue
            return TempFile(fd), tmp

    def create_temp_ahead(self, dir_fd: int) -> "Future[tuple[TempFile, bytes]]":
        """`create_temp` on a helper thread, for a file the restore reaches a few downloads later: creating
        an inode costs ~250 us here (kernel time, GIL released), which then overlaps the decoding of the
        files before it. The directory descriptor is duplicated, so the caller may close its own meanwhile.
        The future fails (FileExistsError) if the name is taken, or with O_TMPFILE refused: `create_temp`
        then finds another way."""
        if self._ahead is None:
            self._ahead = ThreadPoolExecutor(1, thread_name_prefix="restore temps")
        return self._ahead.submit(_open_temp, os.dup(dir_fd), b"" if self._unnamed else self._temp_name())

    def close(self) -> None:
        """Stop the helper thread (after the temps asked for are made)."""
        if self._ahead is not None:
            self._ahead.shutdown()
            self._ahead = None

    def discard_temp(self, dir_fd: int, f: TempFile, tmp: bytes) -> None:
        f.close()
        if not tmp:
            return  # unnamed: closing it freed it
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass

    def commit_file(self, dir_fd: int, f: TempFile, tmp: bytes, name: bytes, attrs: Attributes | None) -> None:
        """Metadata through the descriptor, then link the temp file to `name` (never replacing anything)."""
        try:
            if attrs is not None:
                self._apply_fd(f.fileno(), attrs)
            if not tmp:
                try:
                    os.link(f"/proc/self/fd/{f.fileno()}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
                except OSError as e:
                    if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                        raise
                    self._relink(dir_fd, f, name, attrs)
                f.close()
                return
            f.close()
            try:
                os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                # a file system without hard links: check, then rename (the target is ours, 0700)
                if _exists(dir_fd, name):
                    raise FileExistsError(errno.EEXIST, "File exists") from None
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                return
        except BaseException:
            self.discard_temp(dir_fd, f, tmp)
            raise
        os.unlink(tmp, dir_fd=dir_fd)

    def _relink(self, dir_fd: int, f: TempFile, name: bytes, attrs: Attributes | None) -> None:
        """An unnamed file the file system will not link: copied into a named temp, which is committed."""
        self._unnamed = False
        named, tmp = self.create_temp(dir_fd)
        try:
            done = 0
            while n := os.sendfile(named.fileno(), f.fileno(), done, 1 << 30):
                done += n
        except BaseException:
            self.discard_temp(dir_fd, named, tmp)
            raise
        self.commit_file(dir_fd, named, tmp, name, attrs)

    def link(self, src_dir_fd: int, src: bytes, dst_dir_fd: int, dst: bytes) -> None:
        """Another name for an inode restored earlier (a hard link); never follows, never replaces."""
        os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)

    # ------------------------------------------------------------ everything else
    def make_node(self, dir_fd: int, name: bytes, attrs: Attributes) -> bool:
        """A symlink (never followed), fifo, socket or device node, with its metadata.

        False: a device node skipped because only root may make one (warned about once).
        """
        if attrs.file_type is FileType.SYMLINK:
            if not attrs.symlink_target or b"\0" in attrs.symlink_target:
                raise IntegrityError(f"symlink target {attrs.symlink_target[:80]!r} is empty or holds NUL")
            os.symlink(attrs.symlink_target, name, dir_fd=dir_fd)
        else:
            kind = _NODE_TYPES.get(attrs.file_type)
            if kind is None:
                raise IntegrityError(f"cannot make a node of type {attrs.file_type.name}")
            if kind in (stat.S_IFCHR, stat.S_IFBLK) and not self.as_root:
                self.warn_once("devices", "not running as root: device nodes were not restored")
                return False
            old = os.umask(0)  # the node is born with its final mode: no chmod of a path later
            try:
                os.mknod(name, kind | (attrs.mode & 0o7777), attrs.rdev, dir_fd=dir_fd)
            finally:
                os.umask(old)
        self._apply_name(dir_fd, name, attrs)
        return True

    def set_dir_metadata(self, dir_fd: int, attrs: Attributes) -> None:
        """Applied after the directory's contents, so its mode and mtime are the last word."""
        self._apply_fd(dir_fd, attrs)

    # ------------------------------------------------------------ resume
    def already_restored(self, dir_fd: int, name: bytes, attrs: Attributes | None) -> bool:
        """True when `name` is there as a finished restore left it (type, mtime; target for links)."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if attrs is None:
            return stat.S_ISREG(st.st_mode)
        if stat.S_IFMT(st.st_mode) != _STAT_TYPES[attrs.file_type]:
            return False
        if attrs.file_type is FileType.SYMLINK:
            return os.readlink(name, dir_fd=dir_fd) == os.fsdecode(attrs.symlink_target)
        return st.st_mtime_ns == attrs.mtime_ns

    def remove_strays(self, dir_fd: int, keep: set[bytes]) -> int:
        """Remove temporary files an interrupted restore left in `dir_fd` (not names the store lists)."""
        removed = 0
        with os.scandir(dir_fd) as it:
            names = [os.fsencode(e.name) for e in it]
        for name in names:
            if is_temp_name(name) and name not in keep:
                os.unlink(name, dir_fd=dir_fd)
                removed += 1
        return removed

    # ------------------------------------------------------------ metadata
    def _owner(self, attrs: Attributes) -> tuple[int, int] | None:
        if not self.as_root:
            if (attrs.uid, attrs.gid) != (os.geteuid(), os.getegid()):
                self.warn_once("owners", "not running as root: files belong to the restoring user, "
                                         "not to their recorded owners")
            return None
        return _uid(attrs.user, attrs.uid), _gid(attrs.group, attrs.gid)

    def _apply_fd(self, fd: int, attrs: Attributes) -> None:
        owner = self._owner(attrs)
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, attrs.mode & 0o7777)  # after chown, which clears set-id bits
        for xname, value in attrs.xattrs:
            try:
                os.setxattr(fd, xname, value)
            except OSError as e:
                self.warn_once(f"xattr {e.errno}", f"some extended attributes were not restored: {e.strerror}")
        os.utime(fd, ns=(attrs.mtime_ns, attrs.mtime_ns))

    def _apply_name(self, dir_fd: int, name: bytes, attrs: Attributes) -> None:
        """Metadata of a node just made in `dir_fd` (no descriptor can be opened on a link or fifo safely)."""
        owner = self._owner(attrs)
        if owner is not None:
            os.chown(name, *owner, dir_fd=dir_fd, follow_symlinks=False)
            if attrs.file_type is not FileType.SYMLINK and attrs.mode & 0o6000:
                self.warn_once("setid", "set-user/group-id bits on special files were dropped by chown")
        if attrs.xattrs and attrs.file_type is not FileType.SYMLINK:
            self.warn_once("node xattrs", "extended attributes of fifos, sockets and devices are not restored")
        os.utime(name, ns=(attrs.mtime_ns, attrs.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


def _open_temp(dir_fd: int, tmp: bytes) -> tuple[TempFile, bytes]:
    """`tmp` created in `dir_fd` (closed after), or with tmp b"" an unnamed file."""
    try:
        if not tmp:
            return TempFile(os.open(".", TMPFILE_FLAGS, 0o600, dir_fd=dir_fd)), tmp
        return TempFile(os.open(tmp, FILE_FLAGS, 0o600, dir_fd=dir_fd)), tmp
    finally:
        os.close(dir_fd)


def _exists(dir_fd: int, name: bytes) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


@lru_cache(maxsize=256)
def _uid(user: str, uid: int) -> int:
    """The local id of the recorded user name when it exists here (like tar), else the number."""
    if user:
        try:
            return pwd.getpwnam(user).pw_uid
        except KeyError:
            pass
    return uid


@lru_cache(maxsize=256)
def _gid(group: str, gid: int) -> int:
    if group:
        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            pass
    return gid
