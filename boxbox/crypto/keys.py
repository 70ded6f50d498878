"""The keys file and every key derived from it: the store never sees any of them.

The keys file is 1024 random bytes and nothing else (no header: a header would only tell
a thief what the file is). Each purpose gets its own key, derived with HKDF-SHA256 under a
distinct label, so a weakness in one use cannot leak into another and the raw key material
is never used directly. The fingerprint is a short hash of one more derived value: it names
a keys file (which store it belongs to) without revealing anything about the keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path
from typing import Any

from boxbox.atomic import create_exclusive
from boxbox.errors import ConfigError, PermissionDenied, ProgrammingError

KEYS_FILE_SIZE = 1024
#: HKDF salt: fixed, public, only separates boxbox's derivations from anyone else's
HKDF_SALT = b"boxbox keys v1"
#: label -> derived key length; AES-SIV-256 needs a 64-byte key (two AES-256 keys)
LABELS: dict[str, int] = {
    "data aes-256-gcm": 32,
    "data chacha20-poly1305": 32,
    "index aes-256-gcm": 32,
    "index chacha20-poly1305": 32,
    "names aes-siv": 64,
    "attributes": 32,
    "attribute hash": 32,
    "fingerprint": 32,
}
FINGERPRINT_BYTES = 8


def derive(master: bytes, label: str, length: int) -> bytes:
    """HKDF-SHA256(master, label) (RFC 5869): one independent key per purpose.

    With the standard library's hmac, not `cryptography`'s HKDF (same bytes, tested): a client
    run that finds nothing changed then never loads `cryptography` (~6 MiB RSS, ~10 ms).
    """
    prk = hmac.digest(HKDF_SALT, master, "sha256")
    info = b"boxbox v1 " + label.encode()
    out, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.digest(prk, block + info + bytes([i]), "sha256")
        out += block
    return out[:length]


class Keys:
    """The derived keys of one keys file; repr never shows key bytes."""

    __slots__ = ("_derived", "fingerprint", "cache")

    def __init__(self, derived: dict[str, bytes], fingerprint: str) -> None:
        self._derived = derived
        self.fingerprint = fingerprint
        #: cipher objects built from these keys, kept by boxbox.crypto.seal (building one costs ~5 us)
        self.cache: dict[Any, Any] = {}

    @classmethod
    def from_master(cls, master: bytes) -> Keys:
        if len(master) != KEYS_FILE_SIZE:
            raise ConfigError(f"keys: expected {KEYS_FILE_SIZE} bytes of key material, got {len(master)}")
        derived = {label: derive(master, label, n) for label, n in LABELS.items()}
        digest = hashlib.sha256(derived.pop("fingerprint")).hexdigest()[: 2 * FINGERPRINT_BYTES]
        fingerprint = "-".join(digest[i:i + 4] for i in range(0, len(digest), 4))
        return cls(derived, fingerprint)

    def key(self, label: str) -> bytes:
        try:
            return self._derived[label]
        except KeyError:
            raise ProgrammingError(f"no derived key labelled {label!r}") from None

    def __repr__(self) -> str:
        return f"Keys(fingerprint={self.fingerprint!r})"


def create_keys_file(path: str | os.PathLike[str]) -> Keys:
    """Write a new 1024-byte random keys file (mode 0600, atomic); never overwrite one."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise ConfigError(f"keys file {path} already exists; refusing to overwrite it",
                          hint="every backup made with it would become unreadable; move it away first "
                               "if you really mean to start again")
    master = os.urandom(KEYS_FILE_SIZE)
    try:
        create_exclusive(path, master, mode=0o600)
    except FileExistsError:
        raise ConfigError(f"keys file {path} already exists; refusing to overwrite it") from None
    except OSError as e:
        raise ConfigError(f"cannot create keys file {path}: {e.strerror}") from None
    return Keys.from_master(master)


def load_keys(path: str | os.PathLike[str]) -> Keys:
    """Read and check a keys file: exact size, a regular file, readable by its owner only."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ConfigError(f"keys file {path} does not exist",
                          hint="create one with `boxbox client init`, or restore your copy of it") from None
    except OSError as e:
        raise ConfigError(f"cannot open keys file {path}: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ConfigError(f"keys file {path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if st.st_mode & 0o077:
            raise PermissionDenied(f"keys file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}, "
                                   "expected 0600)", hint=f"chmod 600 {path}")
        if st.st_size != KEYS_FILE_SIZE:
            raise ConfigError(f"keys file {path}: expected {KEYS_FILE_SIZE} bytes, got {st.st_size}")
        master = f.read(KEYS_FILE_SIZE + 1)
    if len(master) != KEYS_FILE_SIZE:
        raise ConfigError(f"keys file {path}: expected {KEYS_FILE_SIZE} bytes, got {len(master)}")
    return Keys.from_master(master)
