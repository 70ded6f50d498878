"""The message catalogue: every request and reply, each a declared `struct` record.

A message is a NamedTuple with class attributes `ID` (its frame type) and `FIXED` (a
`struct.Struct` for the leading fixed-size fields). Fields after the fixed ones are
variable-length, typed by annotation, encoded in order after the fixed part:

    bytes        u32 length | bytes
    str          u32 length | UTF-8 bytes
    list[bytes]  u32 count  | count x (u32 length | bytes)

Decoding checks, in order: the frame type is known, the payload holds the fixed part, every
declared length fits in what remains, nothing is left over, text is valid UTF-8. Any
failure is a `ProtocolError`; no pickle, no eval, nothing allocated beyond the frame.
"""

from __future__ import annotations

import struct
import typing
from typing import Any, Callable, NamedTuple

from boxbox import magic
from boxbox.errors import BoxboxError, ProtocolError, all_error_classes

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
WIRE_MAGIC = magic.WIRE_HELLO

_LEN = struct.Struct("<I")
assert _LEN.size == 4

# Login flags
LOGIN_READ_ONLY = 0x1
# MoveObject flags
MOVE_ALL_WITH_SAME_NAME = 0x1  # also move older versions stored under the same name
MOVE_ALLOW_OVER_DELETED = 0x2  # the target name may exist if that entry is deleted


class MessageSpec(NamedTuple):
    cls: type
    fixed: struct.Struct
    n_fixed: int
    var_kinds: tuple[str, ...]


CATALOGUE: dict[int, MessageSpec] = {}
_BY_CLASS: dict[type, MessageSpec] = {}
REQUESTS: set[type] = set()

_VAR_KINDS = {bytes: "bytes", str: "str", list[bytes]: "list_bytes"}


def _declare(request: bool) -> Callable[[type], type]:
    def register(cls: type) -> type:
        msg_id: int = cls.ID  # type: ignore[attr-defined]
        fixed: struct.Struct = cls.FIXED  # type: ignore[attr-defined]
        if msg_id in CATALOGUE or not 0 < msg_id < 0xFF00:
            raise ValueError(f"message id {msg_id:#x} of {cls.__name__} is reused or out of range")
        hints = typing.get_type_hints(cls)
        fields: tuple[str, ...] = cls._fields  # type: ignore[attr-defined]
        n_fixed = len(fixed.unpack(bytes(fixed.size)))
        var_kinds = tuple(_VAR_KINDS[hints[name]] for name in fields[n_fixed:])
        spec = MessageSpec(cls, fixed, n_fixed, var_kinds)
        CATALOGUE[msg_id] = spec
        _BY_CLASS[cls] = spec
        if request:
            REQUESTS.add(cls)
        return cls

    return register


request = _declare(True)
reply = _declare(False)


# ---------------------------------------------------------------- session set-up
@request
class Hello(NamedTuple):
    """First message each way: magic and protocol version, so mismatches fail clearly."""

    magic: bytes
    version: int
    software: str
    ID = 0x0001
    FIXED = struct.Struct("<4sI")


@reply
class Error(NamedTuple):
    """A failed request: a `BoxboxError.wire_code` and its message; the client re-raises it."""

    code: int
    message: str
    hint: str
    ID = 0x0002
    FIXED = struct.Struct("<I")


@reply
class Success(NamedTuple):
    """Generic reply carrying the object id the request made or touched (0 if none)."""

    object_id: int
    ID = 0x0003
    FIXED = struct.Struct("<Q")


@request
class Login(NamedTuple):
    """Open the account named by the client certificate, for writing unless READ_ONLY."""

    flags: int
    ID = 0x0010
    FIXED = struct.Struct("<I")


@reply
class LoginReply(NamedTuple):
    account: int
    flags: int
    client_store_marker: int
    blocks_used: int
    blocks_soft_limit: int
    blocks_hard_limit: int
    block_size: int
    ID = 0x0011
    FIXED = struct.Struct("<IIQQQQI")


@request
class GetAccountUsage(NamedTuple):
    ID = 0x0012
    FIXED = struct.Struct("<")


@reply
class AccountUsage(NamedTuple):
    """Usage in blocks of `block_size` bytes, split by kind of object."""

    blocks_used: int
    blocks_current: int
    blocks_old: int
    blocks_deleted: int
    blocks_directories: int
    blocks_soft_limit: int
    blocks_hard_limit: int
    block_size: int
    name: str
    ID = 0x0013
    FIXED = struct.Struct("<QQQQQQQI")


@request
class Finished(NamedTuple):
    """Clean end of session; the server replies Finished and closes."""

    ID = 0x0014
    FIXED = struct.Struct("<")


@request
class KeepAlive(NamedTuple):
    """Sent during long client-side work so the server's idle timeout does not fire."""

    ID = 0x0015
    FIXED = struct.Struct("<")


@request
class SetClientStoreMarker(NamedTuple):
    marker: int
    ID = 0x0016
    FIXED = struct.Struct("<Q")


# ---------------------------------------------------------------- directories
@request
class ListDirectory(NamedTuple):
    """Reply: Success(dir id) then the directory object as a stream, entries filtered by flags."""

    dir_id: int
    flags_must_be_set: int
    flags_not_set: int
    send_attributes: int
    ID = 0x0020
    FIXED = struct.Struct("<QHHB")


@request
class CreateDirectory(NamedTuple):
    parent_id: int
    attributes_mtime: int
    name: bytes
    attributes: bytes
    ID = 0x0021
    FIXED = struct.Struct("<Qq")


@request
class ChangeDirAttributes(NamedTuple):
    dir_id: int
    attributes_mtime: int
    attributes: bytes
    ID = 0x0022
    FIXED = struct.Struct("<Qq")


@request
class DeleteDirectory(NamedTuple):
    dir_id: int
    ID = 0x0023
    FIXED = struct.Struct("<Q")


@request
class UndeleteDirectory(NamedTuple):
    dir_id: int
    ID = 0x0024
    FIXED = struct.Struct("<Q")


# ---------------------------------------------------------------- files and objects
@request
class StoreFile(NamedTuple):
    """Followed by the file object as a stream; diff_from != 0 marks a diff upload.

    `name` and `attributes` are the directory entry's sealed name and sealed attributes,
    `mtime` (ns) and `attributes_hash` its clear fields (see boxbox.objects.directory).
    """

    dir_id: int
    mtime: int
    attributes_hash: bytes
    diff_from: int
    name: bytes
    attributes: bytes
    ID = 0x0030
    FIXED = struct.Struct("<Qq8sQ")


@request
class GetFile(NamedTuple):
    dir_id: int
    object_id: int
    ID = 0x0031
    FIXED = struct.Struct("<QQ")


@request
class GetBlockIndexByID(NamedTuple):
    object_id: int
    ID = 0x0032
    FIXED = struct.Struct("<Q")


@request
class GetBlockIndexByName(NamedTuple):
    dir_id: int
    name: bytes
    ID = 0x0033
    FIXED = struct.Struct("<Q")


@request
class GetObject(NamedTuple):
    object_id: int
    ID = 0x0034
    FIXED = struct.Struct("<Q")


@request
class DeleteFile(NamedTuple):
    dir_id: int
    name: bytes
    ID = 0x0035
    FIXED = struct.Struct("<Q")


@request
class UndeleteFile(NamedTuple):
    dir_id: int
    object_id: int
    ID = 0x0036
    FIXED = struct.Struct("<QQ")


@request
class MoveObject(NamedTuple):
    """Rename and/or move; the client re-seals what is bound to the old place.

    `entry_attributes`, `attributes_hash`: the entry's sealed attributes and keyed hash for
    its new directory and name (both depend on the name).
    `place`: for a file, its new place section (boxbox.objects.file.seal_place); for a
    directory, its sealed directory attributes for the new container. Empty: unchanged.
    """

    object_id: int
    from_dir: int
    to_dir: int
    flags: int
    attributes_hash: bytes
    new_name: bytes
    entry_attributes: bytes
    place: bytes
    ID = 0x0037
    FIXED = struct.Struct("<QQQI8s")


@request
class GetObjectName(NamedTuple):
    object_id: int
    containing_dir: int
    ID = 0x0038
    FIXED = struct.Struct("<QQ")


@reply
class ObjectName(NamedTuple):
    """Sealed names from the root down to the object, with the object's entry fields."""

    flags: int
    mtime: int
    attributes_hash: bytes
    names: list[bytes]
    ID = 0x0039
    FIXED = struct.Struct("<Hq8s")


# ---------------------------------------------------------------- encoding
def encode(msg: Any) -> tuple[int, bytes]:
    """(frame type, payload) for a catalogue message."""
    spec = _BY_CLASS.get(type(msg))
    if spec is None:
        raise ProtocolError(f"{type(msg).__name__} is not a wire message")
    try:
        parts = [spec.fixed.pack(*msg[: spec.n_fixed])]
    except struct.error as e:
        raise ProtocolError(f"{type(msg).__name__}: field out of range: {e}") from None
    for kind, value in zip(spec.var_kinds, msg[spec.n_fixed:]):
        if kind == "str":
            value = value.encode("utf-8")
        if kind in ("bytes", "str"):
            parts += (_LEN.pack(len(value)), value)
        else:
            parts.append(_LEN.pack(len(value)))
            for item in value:
                parts += (_LEN.pack(len(item)), item)
    return spec.cls.ID, b"".join(parts)  # type: ignore[attr-defined]


def decode(frame_type: int, payload: bytes) -> Any:
    """The message for a frame; anything malformed raises ProtocolError."""
    spec = CATALOGUE.get(frame_type)
    if spec is None:
        raise ProtocolError(f"unknown message type {frame_type:#06x}")
    name = spec.cls.__name__
    end = len(payload)
    if end < spec.fixed.size:
        raise ProtocolError(f"{name}: expected at least {spec.fixed.size} bytes, got {end}")
    values: list[Any] = list(spec.fixed.unpack_from(payload))
    pos = spec.fixed.size

    def take_len(what: str) -> int:
        nonlocal pos
        if end - pos < 4:
            raise ProtocolError(f"{name}: truncated length of {what} at offset {pos}")
        (n,) = _LEN.unpack_from(payload, pos)
        pos += 4
        return n

    for field, kind in zip(spec.cls._fields[spec.n_fixed:], spec.var_kinds):  # type: ignore[attr-defined]
        n = take_len(field)
        if kind == "list_bytes":
            if n > (end - pos) // 4:
                raise ProtocolError(f"{name}.{field}: {n} items declared, room for {(end - pos) // 4}")
            items = []
            for _ in range(n):
                m = take_len(field)
                if m > end - pos:
                    raise ProtocolError(f"{name}.{field}: item of {m} bytes, only {end - pos} left")
                items.append(payload[pos:pos + m])
                pos += m
            values.append(items)
        else:
            if n > end - pos:
                raise ProtocolError(f"{name}.{field}: {n} bytes declared, only {end - pos} left")
            raw = payload[pos:pos + n]
            pos += n
            if kind == "str":
                try:
                    values.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise ProtocolError(f"{name}.{field}: text is not valid UTF-8") from None
            else:
                values.append(raw)
    if pos != end:
        raise ProtocolError(f"{name}: {end - pos} unexpected bytes after the last field")
    return spec.cls(*values)


# ---------------------------------------------------------------- errors as data
def error_reply(exc: BoxboxError) -> Error:
    """The wire form of an error: its class's code and the message argument, never a traceback."""
    message = str(exc.args[0]) if len(exc.args) == 1 else " ".join(str(a) for a in exc.args)
    return Error(type(exc).wire_code, message[:4000], (exc.hint or "")[:1000])


def error_from_reply(msg: Error) -> BoxboxError:
    """Rebuild the server's error as the same BoxboxError subclass (unknown codes: BoxboxError)."""
    cls = _ERRORS_BY_CODE.get(msg.code, BoxboxError)
    return cls(msg.message, hint=msg.hint or None)


_ERRORS_BY_CODE: dict[int, type[BoxboxError]] = {}
for _cls in all_error_classes():
    _ERRORS_BY_CODE.setdefault(_cls.wire_code, _cls)
