"""The attributes record: everything needed to restore what the client saw, except the data.

Byte layout (little-endian; this is the plaintext that is sealed with the attributes key):
    offset  size  field
    0       4     magic b"BXAT"
    4       1     version: 2 when the record carries a link identity, else 1 (see below)
    5       1     file type (FileType)
    6       2     reserved, zero
    8       4     mode (permission bits incl. setuid/setgid/sticky, no type bits)
    12      4     uid
    16      4     gid
    20      8     mtime, ns since the epoch (signed)
    28      8     ctime, ns since the epoch (signed)
    36      8     rdev (device number of a block/char device, else 0)
    44      2     length of the user name (UTF-8)
    46      2     length of the group name (UTF-8)
    48      4     length of the symlink target
    52      4     number of extended attributes
    56      16    version 2 only: link identity, u64 inode then u64 device (never both zero)
    56/72   ...   user name, group name, symlink target,
                  then per xattr: u16 name length, u32 value length, name, value
    end     ...   zero padding to a multiple of 16 bytes (hides exact lengths a little)

The link identity says which names were one inode (hard links): (st_dev, st_ino) of a
non-directory with more than one name, 0 otherwise. It is as stable as the inode, so the
client's attribute hash (which covers it) changes only when a file gains or loses its
second name. A record without one is still written as version 1, byte for byte what boxbox
wrote before: the hashes of all other files did not change (no attribute re-upload for
every entry after an upgrade), and older readers still read them.
"""

from __future__ import annotations

import enum
import grp
import os
import pwd
import stat
import struct
from functools import lru_cache
from typing import NamedTuple

from boxbox import magic
from boxbox.errors import FormatError

MAGIC = magic.ATTRIBUTES
VERSION = 2
VERSION_NO_LINK = 1
SUPPORTED_VERSIONS = (1, 2)
HEADER = struct.Struct("<4sBBHIIIqqQHHII")
LINK = struct.Struct("<QQ")
XATTR = struct.Struct("<HI")
assert HEADER.size == 56 and LINK.size == 16 and XATTR.size == 6
PAD = 16
MAX_TARGET = 65536
MAX_XATTRS = 65536
MAX_ATTRIBUTES_SIZE = 4 << 20
MASK64 = (1 << 64) - 1


class FileType(enum.IntEnum):
    REGULAR = 1
    DIRECTORY = 2
    SYMLINK = 3
    FIFO = 4
    CHAR_DEVICE = 5
    BLOCK_DEVICE = 6
    SOCKET = 7


_FROM_MODE = {
    stat.S_IFREG: FileType.REGULAR, stat.S_IFDIR: FileType.DIRECTORY, stat.S_IFLNK: FileType.SYMLINK,
    stat.S_IFIFO: FileType.FIFO, stat.S_IFCHR: FileType.CHAR_DEVICE, stat.S_IFBLK: FileType.BLOCK_DEVICE,
    stat.S_IFSOCK: FileType.SOCKET,
}


class Attributes(NamedTuple):
    """What restore needs to recreate a file system object (data apart)."""

    file_type: FileType
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    ctime_ns: int = 0
    user: str = ""
    group: str = ""
    rdev: int = 0
    symlink_target: bytes = b""
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    #: (st_dev << 64) | st_ino when the inode had more than one name, else 0: equal ids are hard links
    link_id: int = 0

    def pack(self) -> bytes:
        """The record, padded; the bytes that get sealed."""
        user = self.user.encode("utf-8", "surrogateescape")
        group = self.group.encode("utf-8", "surrogateescape")
        if len(user) > 0xFFFF or len(group) > 0xFFFF:
            raise FormatError(f"attributes: user/group name too long ({len(user)}/{len(group)} bytes)")
        if len(self.symlink_target) > MAX_TARGET:
            raise FormatError(f"attributes: symlink target is {len(self.symlink_target)} bytes, limit {MAX_TARGET}")
        if len(self.xattrs) > MAX_XATTRS:
            raise FormatError(f"attributes: {len(self.xattrs)} extended attributes, limit {MAX_XATTRS}")
        if not 0 <= self.link_id < 1 << 128:
            raise FormatError(f"attributes: link id {self.link_id} does not fit 128 bits")
        parts = [HEADER.pack(MAGIC, VERSION if self.link_id else VERSION_NO_LINK, int(self.file_type), 0,
                             self.mode, self.uid, self.gid, self.mtime_ns, self.ctime_ns, self.rdev, len(user),
                             len(group), len(self.symlink_target), len(self.xattrs))]
        if self.link_id:
            parts.append(LINK.pack(self.link_id & MASK64, self.link_id >> 64))
        parts += [user, group, self.symlink_target]
        for name, value in self.xattrs:
            if not name or len(name) > 0xFFFF or len(value) > 0xFFFFFFFF:
                raise FormatError(f"attributes: extended attribute {name[:40]!r} has an empty or too large name "
                                  "or value")
            parts += [XATTR.pack(len(name), len(value)), name, value]
        record = b"".join(parts)
        record += bytes(-len(record) % PAD)
        if len(record) > MAX_ATTRIBUTES_SIZE:
            raise FormatError(f"attributes: record is {len(record)} bytes, limit {MAX_ATTRIBUTES_SIZE}")
        return record

    @classmethod
    def unpack(cls, data: bytes) -> Attributes:
        """Parse a record: length, magic, version, declared sizes, then fields; FormatError on any fault."""
        if len(data) < HEADER.size:
            raise FormatError(f"attributes: record is {len(data)} bytes, shorter than the {HEADER.size}-byte header")
        if len(data) > MAX_ATTRIBUTES_SIZE or len(data) % PAD:
            raise FormatError(f"attributes: record length {len(data)} is not a multiple of {PAD} up to "
                              f"{MAX_ATTRIBUTES_SIZE}")
        (mg, version, ftype, reserved, mode, uid, gid, mtime, ctime, rdev, ulen, glen, tlen,
         nx) = HEADER.unpack_from(data)
        if mg != MAGIC:
            raise FormatError(f"attributes: bad magic {mg!r}, expected {MAGIC!r}")
        if version not in SUPPORTED_VERSIONS:
            raise FormatError(f"attributes: unsupported version {version}, expected one of {SUPPORTED_VERSIONS}")
        if ftype not in FileType.__members__.values() or reserved:
            raise FormatError(f"attributes: unknown file type {ftype} or reserved field {reserved} set")
        if tlen > MAX_TARGET or nx > MAX_XATTRS:
            raise FormatError(f"attributes: symlink target {tlen} bytes / {nx} xattrs exceed the limits")
        pos = HEADER.size
        link_id = 0
        if version == VERSION:
            if len(data) < pos + LINK.size:
                raise FormatError(f"attributes: version {version} record of {len(data)} bytes has no link identity")
            ino, dev = LINK.unpack_from(data, pos)
            link_id = dev << 64 | ino
            if not link_id:
                raise FormatError(f"attributes: version {version} record with a zero link identity "
                                  f"(written as version {VERSION_NO_LINK})")
            pos += LINK.size
        end = pos + ulen + glen + tlen
        if end + nx * XATTR.size > len(data):
            raise FormatError(f"attributes: declared sizes need {end + nx * XATTR.size} bytes, record has {len(data)}")
        user = data[pos:pos + ulen].decode("utf-8", "surrogateescape")
        group = data[pos + ulen:pos + ulen + glen].decode("utf-8", "surrogateescape")
        target = bytes(data[pos + ulen + glen:end])
        pos = end
        xattrs = []
        for _ in range(nx):
            if pos + XATTR.size > len(data):
                raise FormatError(f"attributes: xattr header at {pos} runs past the end ({len(data)} bytes)")
            nlen, vlen = XATTR.unpack_from(data, pos)
            pos += XATTR.size
            if not nlen or pos + nlen + vlen > len(data):
                raise FormatError(f"attributes: xattr at {pos} has an empty name or needs {nlen + vlen} bytes, "
                                  f"{len(data) - pos} left")
            xattrs.append((bytes(data[pos:pos + nlen]), bytes(data[pos + nlen:pos + nlen + vlen])))
            pos += nlen + vlen
        if len(data) - pos >= PAD or any(data[pos:]):
            raise FormatError(f"attributes: {len(data) - pos} bytes after the record are not zero padding")
        return cls(FileType(ftype), mode, uid, gid, mtime, ctime, user, group, rdev, target, tuple(xattrs), link_id)

    def hash_material(self, name: bytes) -> bytes:
        """What the keyed attribute hash covers: name and attributes, not the times.

        mtime is compared in the clear entry anyway and ctime moves on every rename or
        link, so hashing them would make every such event look like an attribute change.
        """
        return len(name).to_bytes(4, "little") + name + self._replace(mtime_ns=0, ctime_ns=0).pack()


@lru_cache(maxsize=256)
def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=256)
def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def _read_xattrs(path: str | bytes, follow_symlinks: bool) -> tuple[tuple[bytes, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=follow_symlinks)
    except (OSError, AttributeError):  # no xattr support on this file system / platform
        return ()
    out = []
    for name in sorted(names):
        try:
            out.append((os.fsencode(name), os.getxattr(path, name, follow_symlinks=follow_symlinks)))
        except OSError:  # removed meanwhile or not readable by us: skip, like Box Backup
            continue
    return tuple(out)


def attributes_from_path(path: str | bytes | os.PathLike[str], st: os.stat_result | None = None,
                         follow_symlinks: bool = False) -> Attributes:
    """Read the attributes of `path` (lstat unless follow_symlinks); pass `st` if already known."""
    p = os.fspath(path)
    if st is None:
        st = os.stat(p, follow_symlinks=follow_symlinks)
    ftype = _FROM_MODE.get(stat.S_IFMT(st.st_mode))
    if ftype is None:
        raise FormatError(f"{os.fsdecode(p)}: unsupported file type {stat.S_IFMT(st.st_mode):o}")
    target = os.fsencode(os.readlink(p)) if ftype is FileType.SYMLINK else b""
    rdev = st.st_rdev if ftype in (FileType.CHAR_DEVICE, FileType.BLOCK_DEVICE) else 0
    return Attributes(ftype, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns,
                      _user_name(st.st_uid), _group_name(st.st_gid), rdev, target,
                      _read_xattrs(p, follow_symlinks), link_identity(st))


def link_identity(st: os.stat_result) -> int:
    """The link id of what `st` describes: its inode's (device, inode) if it has other names, else 0.

    Directories always have several links (`.`, `..` of children) and cannot be hard-linked:
    they get 0.
    """
    if st.st_nlink < 2 or stat.S_ISDIR(st.st_mode):
        return 0
    return (st.st_dev & MASK64) << 64 | (st.st_ino & MASK64)
