"""Attributes records: read from real files, packed and parsed back, malformed records refused."""

from __future__ import annotations

import os
import stat

import pytest

from boxbox.errors import FormatError
from boxbox.objects.attributes import HEADER, LINK, MAGIC, Attributes, FileType, attributes_from_path


def test_regular_file_with_xattr(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o4751)
    try:
        os.setxattr(f, "user.boxbox", b"\x00value")
        has_xattr = True
    except OSError:
        has_xattr = False
    st = os.lstat(f)
    a = attributes_from_path(f)
    assert a.file_type is FileType.REGULAR and a.mode == 0o4751
    assert (a.uid, a.gid, a.mtime_ns, a.ctime_ns) == (st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns)
    assert a.user and a.symlink_target == b""
    if has_xattr:
        assert (b"user.boxbox", b"\x00value") in a.xattrs
    assert Attributes.unpack(a.pack()) == a


def test_symlink_fifo_directory(tmp_path):
    (tmp_path / "target").write_bytes(b"")
    os.symlink(b"target", tmp_path / "link")
    os.symlink(b"dangling\xff", tmp_path / "dangling")
    os.mkfifo(tmp_path / "fifo", 0o620)
    link = attributes_from_path(tmp_path / "link")
    assert link.file_type is FileType.SYMLINK and link.symlink_target == b"target"
    assert attributes_from_path(tmp_path / "dangling").symlink_target == b"dangling\xff"
    assert attributes_from_path(tmp_path / "fifo").file_type is FileType.FIFO
    assert stat.S_IMODE(os.lstat(tmp_path / "fifo").st_mode) == attributes_from_path(tmp_path / "fifo").mode
    assert attributes_from_path(tmp_path).file_type is FileType.DIRECTORY
    followed = attributes_from_path(tmp_path / "link", follow_symlinks=True)
    assert followed.file_type is FileType.REGULAR


def test_hard_links_share_a_link_id_and_single_names_have_none(tmp_path):
    (tmp_path / "a").write_bytes(b"x")
    (tmp_path / "single").write_bytes(b"y")
    os.link(tmp_path / "a", tmp_path / "b")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "sub").mkdir()  # a directory has several links, but is never hard-linked
    a, b = attributes_from_path(tmp_path / "a"), attributes_from_path(tmp_path / "b")
    st = os.lstat(tmp_path / "a")
    assert a.link_id == b.link_id == st.st_dev << 64 | st.st_ino
    assert attributes_from_path(tmp_path / "single").link_id == 0
    assert attributes_from_path(tmp_path / "d").link_id == 0
    assert Attributes.unpack(a.pack()) == a and a.pack()[4] == 2
    os.unlink(tmp_path / "b")  # back to one name: back to no link id, and the version 1 record
    assert attributes_from_path(tmp_path / "a").link_id == 0


def test_record_without_link_is_version_1_as_before():
    """The bytes (and so the attribute hash) of a file without hard links did not change with version 2."""
    a = Attributes(FileType.REGULAR, 0o644, 1000, 1000, 5, 6, "u", "g")
    v1 = HEADER.pack(MAGIC, 1, 1, 0, 0o644, 1000, 1000, 5, 6, 0, 1, 1, 0, 0) + b"ug"
    assert a.pack() == v1 + bytes(-len(v1) % 16)
    assert a.link_id == 0 and Attributes.unpack(a.pack()) == a


def test_pack_is_padded_and_hash_material_ignores_times():
    a = Attributes(FileType.CHAR_DEVICE, 0o600, 0, 5, -1, 2, "root", "tty", rdev=0x0501)
    assert len(a.pack()) % 16 == 0
    assert Attributes.unpack(a.pack()) == a
    assert a.hash_material(b"n") == a._replace(mtime_ns=9, ctime_ns=9).hash_material(b"n")
    assert a.hash_material(b"n") != a._replace(mode=0o644).hash_material(b"n")
    assert a.hash_material(b"n") != a.hash_material(b"m")


def _record(**fields) -> bytes:
    values = dict(magic=MAGIC, version=1, ftype=1, reserved=0, mode=0, uid=0, gid=0, mtime=0, ctime=0, rdev=0,
                  ulen=0, glen=0, tlen=0, nx=0)
    values.update(fields)
    raw = HEADER.pack(*values.values())
    return raw + bytes(-len(raw) % 16)


@pytest.mark.parametrize("data, message", [
    (b"", "shorter than the 56-byte header"),
    (_record()[:-1] + b"", "not a multiple of 16"),
    (_record(magic=b"XXXX"), "bad magic"),
    (_record(version=3), "unsupported version 3"),
    (_record(version=2), "has no link identity"),
    (_record(version=2) + LINK.pack(0, 0), "zero link identity"),
    (_record(ftype=9), "unknown file type 9"),
    (_record(reserved=1), "reserved"),
    (_record(ulen=1000), "declared sizes need"),
    (_record(nx=100_000), "exceed the limits"),
    (_record(nx=1), "empty name"),
    (_record() + bytes(16), "not zero padding"),
    (_record(tlen=2)[:-8] + b"ab\x01" + bytes(5), "not zero padding"),
])
def test_malformed_records(data, message):
    with pytest.raises(FormatError, match=message):
        Attributes.unpack(data)


def test_oversized_fields_refused_on_pack():
    with pytest.raises(FormatError, match="symlink target"):
        Attributes(FileType.SYMLINK, 0, 0, 0, 0, symlink_target=b"x" * 70000).pack()
