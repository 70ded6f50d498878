"""Sealing with the derived keys: AEAD for blocks, indexes and attributes, AES-SIV for names.

Sealed blob layout (AES-256-GCM or ChaCha20-Poly1305):
    offset 0   12 bytes  nonce, fresh from os.urandom for every seal (never a counter, so two
                         clients sharing a keys file cannot collide in practice: 2^-32 after
                         2^32 seals of one key)
    offset 12  n bytes   ciphertext
    offset 12+n 16 bytes tag
Sealed name (AES-SIV, deterministic so the store can match names it cannot read):
    16-byte synthetic IV, then the name padded with 0x80 and zeros to a multiple of 16 bytes,
    so the store learns a name's length only to 16 bytes (Box Backup's Blowfish: 8 bytes).
Every failure to open is an `IntegrityError` naming what was being opened; the cipher's own
exception never escapes.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from boxbox.crypto.keys import Keys
from boxbox.errors import ConfigError, IntegrityError, ProgrammingError

#: cipher id as stored in object headers -> config name
CIPHERS: dict[int, str] = {1: "aes-256-gcm", 2: "chacha20-poly1305"}
CIPHER_IDS: dict[str, int] = {name: cid for cid, name in CIPHERS.items()}
DEFAULT_CIPHER = "aes-256-gcm"
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
SIV_SIZE = 16
NAME_PAD = 16
#: longest clear name accepted (Linux allows 255 bytes; other systems and archives more)
MAX_NAME = 4096
MAX_SEALED_NAME = SIV_SIZE + MAX_NAME + NAME_PAD
ATTRIBUTE_HASH_SIZE = 8


def cipher_id(name: str) -> int:
    """Config cipher name -> header id."""
    try:
        return CIPHER_IDS[name]
    except KeyError:
        raise ConfigError(f"unknown cipher {name!r}, expected one of {', '.join(CIPHER_IDS)}") from None


def aead(keys: Keys, purpose: str, cid: int) -> Any:
    """The AEAD object for `purpose` ('data' or 'index') and cipher id, built once per Keys."""
    cached = keys.cache.get((purpose, cid))
    if cached is not None:
        return cached
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    name = CIPHERS.get(cid)
    if name is None or purpose not in ("data", "index"):
        raise ProgrammingError(f"no AEAD for purpose {purpose!r} and cipher id {cid}")
    cls = AESGCM if name == "aes-256-gcm" else ChaCha20Poly1305
    obj = keys.cache[(purpose, cid)] = cls(keys.key(f"{purpose} {name}"))
    return obj


def _attributes_aead(keys: Keys) -> Any:
    obj = keys.cache.get("attributes")
    if obj is None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        obj = keys.cache["attributes"] = AESGCM(keys.key("attributes"))
    return obj


def _siv(keys: Keys) -> Any:
    obj = keys.cache.get("names")
    if obj is None:
        from cryptography.hazmat.primitives.ciphers.aead import AESSIV

        obj = keys.cache["names"] = AESSIV(keys.key("names aes-siv"))
    return obj


def seal(cipher: Any, plaintext: bytes | memoryview, aad: bytes) -> bytes:
    """nonce || AEAD(plaintext, aad) under a fresh random nonce."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + cipher.encrypt(nonce, plaintext, aad)


def unseal(cipher: Any, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
    """Open a sealed blob or raise IntegrityError naming `what`."""
    from cryptography.exceptions import InvalidTag

    if len(sealed) < OVERHEAD:
        raise IntegrityError(f"{what}: sealed data is {len(sealed)} bytes, shorter than the {OVERHEAD}-byte minimum")
    mv = memoryview(sealed)
    try:
        return cipher.decrypt(mv[:NONCE_SIZE], mv[NONCE_SIZE:], aad)
    except InvalidTag:
        raise IntegrityError(f"{what}: authentication failed (tampered, damaged or sealed with other keys)") from None


def seal_attributes(keys: Keys, plaintext: bytes, aad: bytes) -> bytes:
    """Attributes are always AES-256-GCM: small, and read far less often than blocks."""
    return seal(_attributes_aead(keys), plaintext, aad)


def open_attributes(keys: Keys, sealed: bytes, aad: bytes, what: str) -> bytes:
    return unseal(_attributes_aead(keys), sealed, aad, what)


def pad_name(name: bytes) -> bytes:
    """ISO/IEC 7816-4 padding: 0x80 then zeros up to a multiple of 16 (reversible for any bytes)."""
    padded = name + b"\x80"
    return padded + bytes(-len(padded) % NAME_PAD)


def unpad_name(padded: bytes) -> bytes | None:
    """Inverse of pad_name; None when the padding is not exactly what pad_name makes."""
    stripped = padded.rstrip(b"\x00")
    if not stripped.endswith(b"\x80") or len(padded) - len(stripped) >= NAME_PAD or len(padded) % NAME_PAD:
        return None
    return stripped[:-1]


def seal_name(keys: Keys, name: bytes, context: bytes) -> bytes:
    """Deterministic sealed name: the same name in the same context always seals the same."""
    if not isinstance(name, bytes):
        raise ProgrammingError(f"names are bytes, got {type(name).__name__}")
    if not name or len(name) > MAX_NAME:
        raise ConfigError(f"a name must be 1 to {MAX_NAME} bytes, got {len(name)}")
    return _siv(keys).encrypt(pad_name(name), [b"boxbox name v1", context])


def open_name(keys: Keys, sealed: bytes, context: bytes, what: str) -> bytes:
    """Open a sealed name or raise IntegrityError naming `what`."""
    from cryptography.exceptions import InvalidTag

    if len(sealed) < SIV_SIZE + NAME_PAD or len(sealed) > MAX_SEALED_NAME or (len(sealed) - SIV_SIZE) % NAME_PAD:
        raise IntegrityError(f"{what}: sealed name has impossible length {len(sealed)}")
    try:
        padded = _siv(keys).decrypt(sealed, [b"boxbox name v1", context])
    except InvalidTag:
        raise IntegrityError(f"{what}: name authentication failed (tampered, moved, or sealed with other keys)"
                             ) from None
    name = unpad_name(padded)
    if not name:
        raise IntegrityError(f"{what}: name padding is invalid")
    return name


def attribute_hash(keys: Keys, data: bytes) -> bytes:
    """Keyed 64-bit hash: attribute changes are detectable without revealing attributes."""
    return hashlib.blake2b(data, digest_size=ATTRIBUTE_HASH_SIZE, key=keys.key("attribute hash"),
                           person=b"boxbox attrhash").digest()


def seal_entry_name(keys: Keys, directory_id: int, name: bytes) -> bytes:
    """A name as filed in directory `directory_id`: the same name seals differently elsewhere."""
    return seal_name(keys, name, directory_id.to_bytes(8, "little"))


def open_entry_name(keys: Keys, directory_id: int, sealed: bytes, what: str) -> bytes:
    return open_name(keys, sealed, directory_id.to_bytes(8, "little"), what)
