"""The store's protocol commands: one server session per connection, handlers registered by type.

The account is the one in the client certificate (given to `Session` by the server), never a
request field. Every id in a request is looked up in that account only, so an id of
another account is simply "not found". Directory changes are kept in memory and written,
with the account info, by `sync()` — which the dispatcher calls before it sends replies,
so a pipelined batch of a hundred operations costs one write per touched directory, and
no reply ever reports a change that is not on disc.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from typing import BinaryIO, NamedTuple

from boxbox.crypto.seal import MAX_SEALED_NAME, OVERHEAD, SIV_SIZE
from boxbox.errors import FormatError, NotFound, PermissionDenied, UsageError, storage_error
from boxbox.objects.directory import (
    DELETED, DIR, FILE, MAGIC as DIRECTORY_MAGIC, MAX_SEALED_ATTRIBUTES, OLD, Directory, Entry,
)
from boxbox.objects.file import COPY_CHUNK, read_place
from boxbox.objects.layout import FileLayout, read_file_layout, replace_place, write_reverse_patch
from boxbox.store import metrics
from boxbox.store.account import ROOT_DIRECTORY_ID, Account, LimitedWriter, Store
from boxbox.store.versions import combine_diff, open_version, reused_blocks
from boxbox.wire import messages as m
from boxbox.wire.commands import NONE, READ, WRITE, Access, StreamReply, command
from boxbox.wire.transport import InStream

log = logging.getLogger(__name__)

#: Clean directories kept in memory between requests (writers only; readers re-read).
DIRECTORY_CACHE = 256
#: An upload no bigger than this is received whole before it is parsed: the keyless parser then seeks
#: through it in memory and it goes to disc in one write, instead of ~12 stream reads an object through
#: `_Tee` (0.6 of the 5.4 s a first backup's session thread took at scale 0.3, profiled).
WHOLE_UPLOAD = 1 << 20


class Session:
    """Server-side state of one connection."""

    def __init__(self, store: Store, account: int) -> None:
        self.store = store
        self.account_number = account
        self.access: Access = NONE
        self.account: Account | None = None
        self._dirs: dict[int, Directory] = {}
        self._dirty: set[int] = set()
        self._patches: list[PendingPatch] = []

    @property
    def acct(self) -> Account:
        if self.account is None:
            raise PermissionDenied("log in first")
        return self.account

    # ------------------------------------------------------------ directories
    def directory(self, dir_id: int) -> Directory:
        """A directory of this account (cached); NotFound for anything else, including file ids."""
        d = self._dirs.get(dir_id)
        if d is not None:
            return d
        data = self.acct.read_object(dir_id)
        if data[:4] != DIRECTORY_MAGIC:
            raise NotFound(f"directory {dir_id:#x} (that id is not a directory)")
        try:
            d = Directory.parse(data)
        except FormatError as e:
            raise FormatError(f"directory {dir_id:#x}: {e.args[0]}") from None
        self._dirs[dir_id] = d
        return d

    def mark(self, d: Directory) -> None:
        self._dirty.add(d.object_id)

    def patch_later(self, patch: "PendingPatch") -> None:
        self._patches.append(patch)

    def unsaved(self) -> bool:
        """Changes a sync would write (the dispatcher waits a moment for more before syncing them)."""
        return bool(self._dirty or self._patches)

    def sync(self) -> None:
        """Write changed directories and the account info (called before replies are flushed).

        A directory whose size in blocks changed updates its entry in a cached parent, which
        is then written too (rare: only when a directory crosses a block boundary). Old
        versions become reverse patches only after the directory listing their new version
        is on disc, so a crash never leaves a patch whose newer object nobody lists.
        """
        acct = self.account
        if acct is None:
            return
        if self._dirty:
            acct.change(change_count=acct.info.change_count + 1)  # housekeeping's dirty marker
        self._write_directories(acct)
        # the barrier (new objects durable before a directory lists them or a reply leaves), and the
        # directories' group commit in the same round of fsyncs: durable before any patch
        acct.publish_rewrites(barrier=True)
        if self._patches:
            patches, self._patches = self._patches, []
            patched: set[int] = set()
            for patch in patches:
                if patch.old_id not in patched:
                    patched.add(patch.old_id)
                    self._write_patch(acct, patch)
            self._write_directories(acct)
            acct.publish_rewrites()  # the patches, then the directories with their new sizes
        acct.commit()
        if not acct.writable or len(self._dirs) > DIRECTORY_CACHE:
            self._dirs.clear()

    def _write_patch(self, acct: Account, patch: "PendingPatch") -> None:
        """Rewrite the old version as a reverse patch against the new one; credit the space saved."""
        d = self._dirs.get(patch.dir_id)
        entry = d.entry(patch.old_id) if d is not None else None
        if entry is None or entry.newer != patch.new_id:
            return  # moved or changed in the same batch: it stays whole, which is always correct
        with acct.open_object(patch.old_id) as f:
            old = read_file_layout(f)
            if old.refs:
                return
            with acct.rewrite_object(patch.old_id) as w:
                write_reverse_patch(old, f, patch.old_id, patch.diff, patch.new_id, w)
        saved = entry.size_blocks - w.blocks
        kind = _usage_kind(entry.flags)
        acct.add(blocks_used=-saved, **{f"blocks_{kind}": -saved})
        entry.size_blocks = w.blocks
        self.mark(d)  # type: ignore[arg-type]

    def _write_directories(self, acct: Account) -> None:
        """Stage every changed directory (and a parent whose entry's size follows) for `publish_rewrites`."""
        data: dict[int, bytes] = {}
        blocks: dict[int, int] = {}  # what each directory's newest version here takes
        while self._dirty:
            d = self._dirs[self._dirty.pop()]
            data[d.object_id] = d.serialize()
            before = blocks[d.object_id] if d.object_id in blocks else acct.usage_of(d.object_id)
            blocks[d.object_id] = acct.backend.blocks_for_length(len(data[d.object_id]))
            delta = blocks[d.object_id] - before
            if delta:
                acct.add(blocks_used=delta, blocks_directories=delta)
                parent = self._parent(d)
                entry = parent.entry(d.object_id) if parent is not None else None
                if entry is not None:
                    entry.size_blocks = max(0, entry.size_blocks + delta)
                    self.mark(parent)
        for object_id, content in data.items():
            with acct.rewrite_object(object_id) as w:
                w.write(content)

    def _parent(self, d: Directory) -> Directory | None:
        """The directory listing `d` (read if not cached, so its entry's size follows `d`), or None."""
        if d.object_id == ROOT_DIRECTORY_ID or not d.container_id or d.container_id == d.object_id:
            return None
        try:
            return self.directory(d.container_id)
        except (NotFound, FormatError) as e:
            log.warning("directory %#x: its parent %#x is unreadable: %s", d.object_id, d.container_id, e)
            return None

    def finish(self) -> None:
        """The client said Finished: save everything and release the account before the reply."""
        if self.account is not None and self.account.writable:
            self.account.change(last_backup=int(time.time()))  # metrics hook: the last clean backup
        self.close()

    def close(self) -> None:
        if self.account is not None:
            try:
                if self.account.writable:
                    self.sync()
            except OSError as e:
                raise storage_error(e, "saving changes at the end of the session") from e
            finally:
                self.account.close()
                self.account = None


def _add(d: Directory, entry: Entry) -> None:
    d.entries.append(entry)


def _check_name(what: str, sealed: bytes) -> None:
    """Sealed names must be what the directory format accepts, or the directory would not parse."""
    if not SIV_SIZE < len(sealed) <= MAX_SEALED_NAME:
        raise UsageError(f"{what}: sealed name of {len(sealed)} bytes, expected {SIV_SIZE + 1} to {MAX_SEALED_NAME}")


def _check_attributes(what: str, sealed: bytes) -> None:
    if sealed and not OVERHEAD <= len(sealed) <= MAX_SEALED_ATTRIBUTES:
        raise UsageError(f"{what}: sealed attributes of {len(sealed)} bytes, expected 0 or "
                         f"{OVERHEAD} to {MAX_SEALED_ATTRIBUTES}")


def _usage_kind(flags: int) -> str:
    if flags & DELETED:
        return "deleted"
    if flags & OLD:
        return "old"
    return "current"


def _move_usage(acct: Account, entry: Entry, new_flags: int) -> None:
    """Shift a file entry's blocks and count between current/old/deleted when its flags change."""
    if entry.flags & DIR:
        entry.flags = new_flags
        return
    before, after = _usage_kind(entry.flags), _usage_kind(new_flags)
    if before != after:
        acct.add(**{f"blocks_{before}": -entry.size_blocks, f"count_{before}": -1,
                    f"blocks_{after}": entry.size_blocks, f"count_{after}": 1})
    entry.flags = new_flags


# ---------------------------------------------------------------- session
@command(m.Login, access=NONE)
def login(session: Session, req: m.Login, stream: InStream | None) -> m.LoginReply:
    if session.account is not None:
        raise UsageError("already logged in")
    if req.flags & ~m.LOGIN_READ_ONLY:
        raise UsageError(f"unknown login flags {req.flags:#x}")
    store = session.store
    store.database.refresh()
    number = session.account_number
    if number not in store.database:
        raise PermissionDenied(f"account {number:08x} does not exist on this server")
    info = store.read_info(number)
    if not info.enabled:
        raise PermissionDenied(f"account {number:08x} is disabled", hint="ask the store administrator")
    read_only = bool(req.flags & m.LOGIN_READ_ONLY)
    session.account = store.open(number, write=not read_only)
    session.access = READ if read_only else WRITE
    i = session.account.info
    return m.LoginReply(number, req.flags, i.client_store_marker, i.blocks_used, i.soft_limit, i.hard_limit, 4096)


@command(m.GetAccountUsage, access=READ)
def usage(session: Session, req: m.GetAccountUsage, stream: InStream | None) -> m.AccountUsage:
    i = session.acct.info
    return m.AccountUsage(i.blocks_used, i.blocks_current, i.blocks_old, i.blocks_deleted, i.blocks_directories,
                          i.soft_limit, i.hard_limit, 4096, i.name)


@command(m.KeepAlive, access=NONE)
def keep_alive(session: Session, req: m.KeepAlive, stream: InStream | None) -> m.Success:
    return m.Success(0)


@command(m.SetClientStoreMarker)
def set_marker(session: Session, req: m.SetClientStoreMarker, stream: InStream | None) -> m.Success:
    session.acct.change(client_store_marker=req.marker)
    return m.Success(0)


# ---------------------------------------------------------------- directories
@command(m.ListDirectory, access=READ)
def list_directory(session: Session, req: m.ListDirectory, stream: InStream | None) -> StreamReply:
    d = session.directory(req.dir_id)
    entries = [e for e in d.entries
               if e.flags & req.flags_must_be_set == req.flags_must_be_set and not e.flags & req.flags_not_set]
    if not req.send_attributes:
        entries = [dataclasses.replace(e, sealed_attributes=b"") for e in entries]
    data = Directory(d.object_id, d.container_id, d.sealed_attributes, entries).serialize()
    return StreamReply(m.Success(req.dir_id), io.BytesIO(data))


@command(m.CreateDirectory)
def create_directory(session: Session, req: m.CreateDirectory, stream: InStream | None) -> m.Success:
    _check_name("CreateDirectory", req.name)
    _check_attributes("CreateDirectory", req.attributes)
    acct = session.acct
    parent = session.directory(req.parent_id)
    existing = parent.find(req.name)
    if existing is not None:
        if existing.flags & DIR:
            return m.Success(existing.object_id)  # idempotent: pipelined retries are harmless
        raise UsageError(f"a file with that name already exists in directory {req.parent_id:#x}")
    new_id = acct.allocate_id()
    d = Directory(new_id, req.parent_id, req.attributes)
    blocks = acct.put_object(new_id, d.serialize(), check_limit=False, durable=False)
    session._dirs[new_id] = d
    acct.add(blocks_used=blocks, blocks_directories=blocks, count_directories=1)
    _add(parent, Entry(new_id, DIR, req.name, req.attributes_mtime, blocks))
    session.mark(parent)
    return m.Success(new_id)


@command(m.ChangeDirAttributes)
def change_dir_attributes(session: Session, req: m.ChangeDirAttributes, stream: InStream | None) -> m.Success:
    _check_attributes("ChangeDirAttributes", req.attributes)
    d = session.directory(req.dir_id)
    d.sealed_attributes = req.attributes
    session.mark(d)
    return m.Success(req.dir_id)


def _set_tree_deleted(session: Session, d: Directory, deleted: bool) -> None:
    """Mark every entry below `d` deleted (or not), recursing into subdirectories."""
    stack = [d]
    while stack:
        here = stack.pop()
        for entry in here.entries:
            if entry.flags & DIR:
                try:
                    stack.append(session.directory(entry.object_id))
                except NotFound:
                    log.warning("directory %#x listed in %#x is missing", entry.object_id, here.object_id)
            new = entry.flags | DELETED if deleted else entry.flags & ~DELETED
            if new != entry.flags:
                _move_usage(session.acct, entry, new)
        session.mark(here)


def _entry_in_parent(session: Session, d: Directory) -> tuple[Directory, Entry]:
    parent = session.directory(d.container_id)
    entry = parent.entry(d.object_id)
    if entry is None:
        raise NotFound(f"directory {d.object_id:#x} in its parent {d.container_id:#x}")
    return parent, entry


@command(m.DeleteDirectory)
def delete_directory(session: Session, req: m.DeleteDirectory, stream: InStream | None) -> m.Success:
    if req.dir_id == ROOT_DIRECTORY_ID:
        raise UsageError("the root directory cannot be deleted")
    d = session.directory(req.dir_id)
    parent, entry = _entry_in_parent(session, d)
    _set_tree_deleted(session, d, True)
    entry.flags |= DELETED
    session.mark(parent)
    return m.Success(req.dir_id)


@command(m.UndeleteDirectory)
def undelete_directory(session: Session, req: m.UndeleteDirectory, stream: InStream | None) -> m.Success:
    d = session.directory(req.dir_id)
    if req.dir_id != ROOT_DIRECTORY_ID:
        parent, entry = _entry_in_parent(session, d)
        entry.flags &= ~DELETED
        session.mark(parent)
    _set_tree_deleted(session, d, False)
    return m.Success(req.dir_id)


# ---------------------------------------------------------------- files
class _Tee:
    """The upload stream as the layout parser reads it, every byte also written to the new object.

    The parser reads record by record (a few KiB); writes to the object are gathered into
    256 KiB pieces, which made uploads ~2x faster than one write per record.
    """

    FLUSH_AT = 256 << 10

    def __init__(self, source: "InStream | _Prefixed", sink: LimitedWriter) -> None:
        self._source = source
        self._sink = sink
        self._buf = bytearray()

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self._buf += data
        if len(self._buf) >= self.FLUSH_AT:
            self.flush()
        return data

    def flush(self) -> None:
        if self._buf:
            self._sink.write(self._buf)
            self._buf = bytearray()

    def seekable(self) -> bool:
        return False


class _Prefixed:
    """The part of an upload already received, then the rest of its stream (the parser's view of a big one)."""

    def __init__(self, head: bytes, rest: InStream) -> None:
        self._head = io.BytesIO(head)
        self._rest = rest

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            return self._head.read() + self._rest.read()
        return self._head.read(n) or self._rest.read(n)

    def seekable(self) -> bool:
        return False


def _receive_upto(stream: InStream, limit: int) -> tuple[bytes, bool]:
    """The upload's first frames, up to just past `limit` bytes, and whether they were all of it."""
    parts: list[bytes | bytearray | memoryview] = []
    size = 0
    for chunk in stream.chunks():
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(parts), False
    return b"".join(parts), True


class PendingPatch(NamedTuple):
    """An old version to rewrite as a reverse patch once the directory listing the new one is on disc."""

    dir_id: int
    old_id: int
    new_id: int
    diff: FileLayout


def _diff_base(session: Session, d: Directory, base_id: int) -> tuple[Entry, FileLayout]:
    """The entry and layout of a diff's base: a whole file object in the same directory, or NotFound."""
    hint = "upload the whole file instead"
    base = d.entry(base_id)
    if base is None or not base.flags & FILE:
        raise NotFound(f"diff base {base_id:#x} is not a file in directory {d.object_id:#x}", hint=hint)
    try:
        with session.acct.open_object(base_id) as f:
            layout = read_file_layout(f)
    except NotFound:
        raise NotFound(f"diff base {base_id:#x}: the object no longer exists", hint=hint) from None
    except FormatError as e:
        raise NotFound(f"diff base {base_id:#x} is unreadable ({e.args[0]})", hint=hint) from None
    if base.newer or layout.refs:
        raise NotFound(f"diff base {base_id:#x} is an older version stored as a patch, not a whole file",
                       hint=hint)
    return base, layout


@command(m.StoreFile, stream_in=True)
def store_file(session: Session, req: m.StoreFile, stream: InStream | None) -> m.Success:
    if stream is None:
        raise UsageError("StoreFile needs an upload stream")
    _check_name("StoreFile", req.name)
    _check_attributes("StoreFile", req.attributes)
    acct = session.acct
    d = session.directory(req.dir_id)
    base: Entry | None = None
    if req.diff_from:
        base, base_layout = _diff_base(session, d, req.diff_from)
    new_id = acct.allocate_id()
    with acct.new_object(new_id, durable=False) as writer:
        if base is not None:
            # One pass: references are replaced by copies of the base's sealed records as they stream in.
            with acct.open_object(req.diff_from) as base_source:
                layout = combine_diff(stream, base_layout, base_source, req.diff_from, writer)
        else:
            head, whole = _receive_upto(stream, WHOLE_UPLOAD)
            if whole:
                layout = read_file_layout(io.BytesIO(head))  # checks it ends where the object does
                writer.write(head)
            else:  # one pass: the keyless parser checks the object while it streams to disc
                tee = _Tee(_Prefixed(head, stream), writer)
                layout = read_file_layout(tee)
                tee.flush()
            if layout.refs:
                raise UsageError("the uploaded object refers to blocks of other objects but the request "
                                 "names no diff base (diff_from is 0)")
        if layout.container_id != req.dir_id:
            raise FormatError(f"uploaded object names container {layout.container_id:#x}, "
                              f"the request directory {req.dir_id:#x}")
        if layout.sealed_name != req.name:
            raise FormatError("the sealed name in the uploaded object differs from the request's name")
    blocks = writer.blocks
    for e in d.entries:
        if e.sealed_name == req.name and e.flags & FILE and not e.flags & (OLD | DELETED):
            _move_usage(acct, e, e.flags | OLD)
    entry = Entry(new_id, FILE, req.name, req.mtime, blocks, req.attributes_hash, req.attributes)
    if base is not None and reused_blocks(layout, req.diff_from):
        entry.older = req.diff_from
        base.newer = new_id
        session.patch_later(PendingPatch(req.dir_id, req.diff_from, new_id, layout))
    _add(d, entry)
    acct.add(blocks_used=blocks, blocks_current=blocks, count_current=1)
    session.mark(d)
    metrics.UPLOADS.observe(stream.size, kind="whole" if base is None else "diff")  # metrics hook
    return m.Success(new_id)


def _file_entry(session: Session, dir_id: int, object_id: int) -> Entry:
    entry = session.directory(dir_id).entry(object_id)
    if entry is None or not entry.flags & FILE:
        raise NotFound(f"file {object_id:#x} in directory {dir_id:#x}")
    return entry


def _object_reader(session: Session, object_id: int) -> BinaryIO:
    return session.acct.open_object(object_id)


@command(m.GetFile, access=READ)
def get_file(session: Session, req: m.GetFile, stream: InStream | None) -> StreamReply:
    """Any version as a complete object: a patch is resolved down its chain while it streams."""
    entry = _file_entry(session, req.dir_id, req.object_id)
    if entry.newer:
        return StreamReply(m.Success(req.object_id), open_version(session.acct, req.object_id))
    return StreamReply(m.Success(req.object_id), _object_reader(session, req.object_id))


@command(m.GetObject, access=READ)
def get_object(session: Session, req: m.GetObject, stream: InStream | None) -> StreamReply:
    return StreamReply(m.Success(req.object_id), _object_reader(session, req.object_id))


def _index_reply(session: Session, object_id: int) -> StreamReply:
    with _object_reader(session, object_id) as f:
        try:
            layout = read_file_layout(f)
        except FormatError:
            raise NotFound(f"file {object_id:#x} (that object is not a file)") from None
    return StreamReply(m.Success(object_id), io.BytesIO(layout.index_blob()))


@command(m.GetBlockIndexByID, access=READ)
def get_block_index(session: Session, req: m.GetBlockIndexByID, stream: InStream | None) -> StreamReply:
    return _index_reply(session, req.object_id)


@command(m.GetBlockIndexByName, access=READ)
def get_block_index_by_name(session: Session, req: m.GetBlockIndexByName, stream: InStream | None) -> StreamReply:
    entry = session.directory(req.dir_id).find(req.name)
    if entry is None or not entry.flags & FILE:
        raise NotFound(f"a current file of that name in directory {req.dir_id:#x}")
    return _index_reply(session, entry.object_id)


@command(m.DeleteFile)
def delete_file(session: Session, req: m.DeleteFile, stream: InStream | None) -> m.Success:
    d = session.directory(req.dir_id)
    found = 0
    for e in d.entries:
        if e.sealed_name == req.name and e.flags & FILE and not e.flags & DELETED:
            _move_usage(session.acct, e, e.flags | DELETED)
            if not e.flags & OLD:
                found = e.object_id
    if not found:
        raise NotFound(f"a current file of that name in directory {req.dir_id:#x}")
    session.mark(d)
    return m.Success(found)


@command(m.UndeleteFile)
def undelete_file(session: Session, req: m.UndeleteFile, stream: InStream | None) -> m.Success:
    d = session.directory(req.dir_id)
    entry = _file_entry(session, req.dir_id, req.object_id)
    if entry.flags & DELETED:
        _move_usage(session.acct, entry, entry.flags & ~DELETED)
        session.mark(d)
    return m.Success(req.object_id)


@command(m.MoveObject)
def move_object(session: Session, req: m.MoveObject, stream: InStream | None) -> m.Success:
    _check_name("MoveObject", req.new_name)
    _check_attributes("MoveObject entry", req.entry_attributes)
    if req.flags & ~(m.MOVE_ALL_WITH_SAME_NAME | m.MOVE_ALLOW_OVER_DELETED):
        raise UsageError(f"unknown move flags {req.flags:#x}")
    source = session.directory(req.from_dir)
    target = session.directory(req.to_dir)
    entry = source.entry(req.object_id)
    if entry is None:
        raise NotFound(f"object {req.object_id:#x} in directory {req.from_dir:#x}")
    if entry.flags & DIR:
        if req.object_id == ROOT_DIRECTORY_ID:
            raise UsageError("the root directory cannot be moved")
        ancestor = target
        while True:  # refuse to move a directory into itself or below itself
            if ancestor.object_id == req.object_id:
                raise UsageError(f"directory {req.object_id:#x} cannot be moved into its own subtree")
            if ancestor.object_id == ROOT_DIRECTORY_ID or not ancestor.container_id:
                break
            ancestor = session.directory(ancestor.container_id)
    clash = target.find(req.new_name, exclude=0)
    if clash is not None and clash.object_id != req.object_id:
        live = [e for e in target.entries if e.sealed_name == req.new_name and not e.flags & DELETED
                and not e.flags & OLD]
        if live or not req.flags & m.MOVE_ALLOW_OVER_DELETED:
            raise UsageError(f"the name is already taken in directory {req.to_dir:#x}")
    moving = [entry]
    if req.flags & m.MOVE_ALL_WITH_SAME_NAME:
        moving += [e for e in source.entries if e.sealed_name == entry.sealed_name and e is not entry]
    children = [session.directory(e.object_id) for e in moving if e.flags & DIR]  # all found before any change
    if req.place and entry.flags & FILE:
        _replace_place(session, entry, req)
    elif req.place:
        _check_attributes("MoveObject directory attributes", req.place)
        session.directory(entry.object_id).sealed_attributes = req.place
    for e in moving:
        source.entries.remove(e)
        e.sealed_name = req.new_name
        _add(target, e)
    entry.sealed_attributes = req.entry_attributes
    entry.attr_hash = req.attributes_hash
    for child in children:
        child.container_id = req.to_dir
        session.mark(child)
    session.mark(source)
    session.mark(target)
    return m.Success(req.object_id)


def _replace_place(session: Session, entry: Entry, req: m.MoveObject) -> None:
    """Rewrite a moved file object with the client's new place (keyless: the blocks are copied)."""
    try:
        _, container, sealed_name, _ = read_place(io.BytesIO(req.place))
    except FormatError as e:
        raise UsageError(f"MoveObject: the new place is not valid: {e.args[0]}") from None
    if container != req.to_dir or sealed_name != req.new_name:
        raise UsageError("MoveObject: the new place names another directory or name than the request")
    acct = session.acct
    with acct.open_object(entry.object_id) as f:
        layout = read_file_layout(f)
        try:
            prefix = replace_place(layout.prefix, req.place)
        except FormatError as e:
            raise UsageError(f"MoveObject: the new place is not valid: {e.args[0]}") from None
        f.seek(len(layout.prefix))
        with acct.new_object(entry.object_id, check_limit=False) as w:
            w.write(prefix)
            while chunk := f.read(COPY_CHUNK):
                w.write(chunk)
    delta = w.blocks - entry.size_blocks
    if delta:
        kind = _usage_kind(entry.flags)
        acct.add(blocks_used=delta, **{f"blocks_{kind}": delta})
        entry.size_blocks = w.blocks


@command(m.GetObjectName, access=READ)
def get_object_name(session: Session, req: m.GetObjectName, stream: InStream | None) -> m.ObjectName:
    d = session.directory(req.containing_dir)
    entry = d.entry(req.object_id)
    if entry is None:
        raise NotFound(f"object {req.object_id:#x} in directory {req.containing_dir:#x}")
    names = [entry.sealed_name]
    seen = {d.object_id}
    while d.object_id != ROOT_DIRECTORY_ID:
        parent = session.directory(d.container_id)
        here = parent.entry(d.object_id)
        if here is None or parent.object_id in seen:
            raise NotFound(f"path of directory {d.object_id:#x} (its parent does not list it)")
        seen.add(parent.object_id)
        names.append(here.sealed_name)
        d = parent
    names.reverse()
    return m.ObjectName(entry.flags, entry.mtime_ns, entry.attr_hash, names)
