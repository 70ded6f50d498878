"""The client state file: what the last run knew, so a restart does not re-list the whole store.

Holds, per location, the directory records (which are also the inode -> store id map of
directories: `Records.store_id_by_inode`), the inode -> store id map of files above
`file_tracking_size_threshold`, and the files waiting to be old enough to upload (lazy
mode); plus the client store marker. Written whole with the one atomic writer at the end
of each run. Anything wrong with it — truncated, corrupt, another version, another account — is
a FormatError; `load_or_rebuild` turns that into one log line and an empty state, and the next
run rebuilds from the store.

# File layout (little-endian):
#   HEADER  4s magic  H version  H reserved (0)  I account  Q store_marker  I n_locations
#           Q payload_len  16s blake2b-128 of the payload
#   payload, n_locations times:
#     LOCATION  H name_len  I n_records  I records_len  I n_inodes  I n_pending
#     name (UTF-8), records (records_len bytes: records.RECORD each, pre-order),
#     inode map (n_inodes x <QQ: inode, store id; inodes strictly increasing),
#     pending files, n_pending x PENDING (d first_seen unix time, I path_len) + path bytes
"""

from __future__ import annotations

import logging
import math
import os
import struct
from typing import NamedTuple

from boxbox import magic
from boxbox.atomic import write_atomic
from boxbox.backup.records import InodeMap, Records, digest16
from boxbox.errors import FormatError

log = logging.getLogger(__name__)

MAGIC = magic.CLIENT_STATE
VERSION = 1
SUPPORTED_VERSIONS = (1,)

HEADER = struct.Struct("<4sHHIQIQ16s")
assert HEADER.size == 48
LOCATION = struct.Struct("<HIIII")
assert LOCATION.size == 18
PENDING = struct.Struct("<dI")
assert PENDING.size == 12

#: a state file bigger than this is not ours (1 GiB: ~10M directories)
MAX_STATE_SIZE = 1 << 30


class Header(NamedTuple):
    magic: bytes
    version: int
    reserved: int
    account: int
    store_marker: int
    n_locations: int
    payload_len: int
    digest: bytes


class LocationState:
    """What one location's last run left behind."""

    __slots__ = ("records", "inodes", "pending")

    def __init__(self, records: Records | None = None, inodes: InodeMap | None = None,
                 pending: dict[bytes, float] | None = None) -> None:
        self.records = Records() if records is None else records
        self.inodes = InodeMap() if inodes is None else inodes
        #: path inside the location -> unix time the file was first seen waiting (lazy mode)
        self.pending: dict[bytes, float] = {} if pending is None else pending

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LocationState):
            return NotImplemented
        return (self.records, self.inodes, self.pending) == (other.records, other.inodes, other.pending)


class ClientState:
    """Everything the daemon keeps between runs (plain classes: see outcome.py on dataclasses)."""

    __slots__ = ("account", "store_marker", "locations")

    def __init__(self, account: int = 0, store_marker: int = 0,
                 locations: dict[str, LocationState] | None = None) -> None:
        self.account = account
        self.store_marker = store_marker
        self.locations: dict[str, LocationState] = {} if locations is None else locations

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientState):
            return NotImplemented
        return (self.account, self.store_marker, self.locations) == \
            (other.account, other.store_marker, other.locations)

    def location(self, name: str) -> LocationState:
        """The state of location `name`, empty the first time."""
        return self.locations.setdefault(name, LocationState())

    def forget_store(self) -> None:
        """The store is not the one these ids came from: keep nothing that names a store object."""
        self.store_marker = 0
        for loc in self.locations.values():
            loc.records.forget_store()
            loc.inodes = InodeMap()


def encode(state: ClientState) -> bytes:
    """The state as the bytes of a state file."""
    parts: list[bytes] = []
    for name, loc in state.locations.items():
        bname = name.encode("utf-8")
        records = loc.records.to_bytes()
        inodes = loc.inodes.to_bytes()
        parts.append(LOCATION.pack(len(bname), len(loc.records), len(records), len(inodes) // 16, len(loc.pending)))
        parts += (bname, records, inodes)
        for path, since in loc.pending.items():
            parts.append(PENDING.pack(since, len(path)) + path)
    payload = b"".join(parts)
    digest = digest16(payload)
    return HEADER.pack(MAGIC, VERSION, 0, state.account, state.store_marker, len(state.locations), len(payload),
                       digest) + payload


def decode(blob: bytes, account: int | None = None) -> ClientState:
    """Parse a state file: length, magic, version, sizes, digest, then each location in order."""
    if len(blob) < HEADER.size:
        raise FormatError(f"client state: {len(blob)} bytes, shorter than its {HEADER.size}-byte header")
    head = Header._make(HEADER.unpack_from(blob))
    if head.magic != MAGIC:
        raise FormatError(f"client state: magic {head.magic!r}, expected {MAGIC!r}")
    if head.version not in SUPPORTED_VERSIONS:
        raise FormatError(f"client state: version {head.version}, expected one of {SUPPORTED_VERSIONS}")
    if account is not None and head.account != account:
        raise FormatError(f"client state: account {head.account:x}, expected {account:x}")
    if head.payload_len != len(blob) - HEADER.size:
        raise FormatError(f"client state: payload of {len(blob) - HEADER.size} bytes, header says {head.payload_len}")
    view = memoryview(blob)[HEADER.size:]
    if digest16(view) != head.digest:
        raise FormatError("client state: checksum mismatch (corrupt file)")
    state = ClientState(account=head.account, store_marker=head.store_marker)
    pos = 0

    def take(n: int, what: str) -> memoryview:
        nonlocal pos
        if len(view) - pos < n:
            raise FormatError(f"client state: {what} needs {n} bytes, {len(view) - pos} left")
        pos += n
        return view[pos - n:pos]

    for i in range(head.n_locations):
        name_len, n_records, records_len, n_inodes, n_pending = LOCATION.unpack(take(LOCATION.size, "location header"))
        try:
            name = bytes(take(name_len, "location name")).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"client state: location {i}: name is not UTF-8") from None
        if name in state.locations:
            raise FormatError(f"client state: location {name!r} twice")
        loc = state.location(name)
        loc.records = Records.parse(take(records_len, f"location {name!r} records"), n_records)
        loc.inodes = InodeMap.parse(take(16 * n_inodes, f"location {name!r} inode map"), n_inodes)
        for _ in range(n_pending):
            since, path_len = PENDING.unpack(take(PENDING.size, "pending file"))
            path = bytes(take(path_len, "pending file path"))
            if not math.isfinite(since) or not path or path in loc.pending:
                raise FormatError(f"client state: location {name!r}: bad pending file entry")
            loc.pending[path] = since
    if pos != len(view):
        raise FormatError(f"client state: {len(view) - pos} bytes after {head.n_locations} locations")
    return state


def save(path: str | os.PathLike[str], state: ClientState) -> None:
    """Replace the state file atomically (mode 0600: it maps inodes and names of the machine)."""
    write_atomic(path, encode(state), mode=0o600)


def load(path: str | os.PathLike[str], account: int | None = None) -> ClientState:
    """The saved state; an empty one if there is no file yet; FormatError if it is unusable."""
    try:
        with open(path, "rb") as f:
            blob = f.read(MAX_STATE_SIZE + 1)
    except FileNotFoundError:
        return ClientState(account=account or 0)
    if len(blob) > MAX_STATE_SIZE:
        raise FormatError(f"client state: larger than {MAX_STATE_SIZE} bytes")
    return decode(blob, account)


def load_or_rebuild(path: str | os.PathLike[str], account: int | None = None) -> ClientState:
    """The saved state, or — when it is corrupt or from another version or account — an empty one."""
    try:
        return load(path, account)
    except FormatError as e:
        log.warning("%s: discarding the client state (%s); this run rebuilds it from the store", path, e)
        return ClientState(account=account or 0)
    except OSError as e:
        log.warning("%s: cannot read the client state (%s); this run rebuilds it from the store", path, e.strerror)
        return ClientState(account=account or 0)
