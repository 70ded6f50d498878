"""Keys file, key derivation, sealing: refusals, permissions, tamper detection."""

from __future__ import annotations

import os
import stat

import pytest

from boxbox.crypto import seal as sealing
from boxbox.crypto.keys import KEYS_FILE_SIZE, LABELS, Keys, create_keys_file, load_keys
from boxbox.errors import ConfigError, IntegrityError, PermissionDenied

MASTER = bytes(range(256)) * 4


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys.from_master(MASTER)


def test_create_keys_file_is_random_private_and_loads(tmp_path):
    path = tmp_path / "keys.dat"
    made = create_keys_file(path)
    st = path.stat()
    assert st.st_size == KEYS_FILE_SIZE
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert load_keys(path).fingerprint == made.fingerprint
    other = tmp_path / "other.dat"
    assert create_keys_file(other).fingerprint != made.fingerprint
    assert path.read_bytes() != other.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_create_refuses_to_overwrite(tmp_path):
    path = tmp_path / "keys.dat"
    path.write_bytes(b"precious")
    with pytest.raises(ConfigError, match="already exists") as e:
        create_keys_file(path)
    assert e.value.hint
    assert path.read_bytes() == b"precious"


def test_load_rejects_group_or_world_readable(tmp_path):
    path = tmp_path / "keys.dat"
    create_keys_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(PermissionDenied, match="0644") as e:
        load_keys(path)
    assert e.value.hint == f"chmod 600 {path}"
    os.chmod(path, 0o640)
    with pytest.raises(PermissionDenied):
        load_keys(path)


@pytest.mark.parametrize("size", [0, 1023, 1025, 4096])
def test_load_rejects_wrong_size(tmp_path, size):
    path = tmp_path / "keys.dat"
    path.write_bytes(b"k" * size)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match=f"expected 1024 bytes, got {size}"):
        load_keys(path)


def test_load_missing_and_not_regular(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as e:
        load_keys(tmp_path / "nope")
    assert "boxbox client init" in e.value.hint
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(ConfigError):
        load_keys(d)


def test_derived_keys_distinct_and_fingerprint_not_of_raw_key(keys):
    values = [keys.key(label) for label in LABELS if label != "fingerprint"]
    assert len(set(values)) == len(values)
    assert all(v not in MASTER for v in values)
    assert [len(keys.key(label)) for label in LABELS if label != "fingerprint"] == \
        [n for label, n in LABELS.items() if label != "fingerprint"]
    assert len(keys.fingerprint) == 19 and keys.fingerprint.count("-") == 3
    import hashlib
    assert hashlib.sha256(MASTER).hexdigest()[:16] not in keys.fingerprint.replace("-", "")
    assert Keys.from_master(MASTER).fingerprint == keys.fingerprint  # stable
    assert "key" not in repr(keys).lower().replace("keys(", "")


def test_derive_is_rfc5869_hkdf_sha256():
    """keys.derive uses the standard library's hmac; it must give cryptography's HKDF bytes."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from boxbox.crypto.keys import HKDF_SALT, derive

    master = os.urandom(KEYS_FILE_SIZE)
    for label, n in [*LABELS.items(), ("short", 1), ("long", 33 * 32 + 5)]:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=n, salt=HKDF_SALT, info=b"boxbox v1 " + label.encode())
        assert derive(master, label, n) == hkdf.derive(master)


def test_from_master_wrong_length():
    with pytest.raises(ConfigError, match="expected 1024 bytes of key material, got 5"):
        Keys.from_master(b"short")


@pytest.mark.parametrize("cipher", list(sealing.CIPHER_IDS))
def test_seal_roundtrip_and_tamper(keys, cipher):
    aead = sealing.aead(keys, "data", sealing.cipher_id(cipher))
    sealed = sealing.seal(aead, b"secret data", b"ad")
    assert len(sealed) == len(b"secret data") + sealing.OVERHEAD
    assert sealing.seal(aead, b"secret data", b"ad") != sealed  # fresh nonce every time
    assert sealing.unseal(aead, sealed, b"ad", "x") == b"secret data"
    with pytest.raises(IntegrityError, match="block 7: authentication failed"):
        sealing.unseal(aead, sealed, b"other", "block 7")
    flipped = bytearray(sealed)
    flipped[len(flipped) // 2] ^= 1
    with pytest.raises(IntegrityError):
        sealing.unseal(aead, bytes(flipped), b"ad", "x")
    with pytest.raises(IntegrityError, match="shorter"):
        sealing.unseal(aead, sealed[:10], b"ad", "x")
    index = sealing.aead(keys, "index", sealing.cipher_id(cipher))
    with pytest.raises(IntegrityError):  # purposes use distinct keys
        sealing.unseal(index, sealed, b"ad", "x")


def test_unknown_cipher_is_config_error():
    with pytest.raises(ConfigError, match="unknown cipher 'des'"):
        sealing.cipher_id("des")


def test_names_deterministic_per_directory_and_padded(keys):
    a = sealing.seal_entry_name(keys, 5, b"report.txt")
    assert a == sealing.seal_entry_name(keys, 5, b"report.txt")
    assert a != sealing.seal_entry_name(keys, 6, b"report.txt")
    assert len(a) == 16 + 16 and len(sealing.seal_entry_name(keys, 5, b"x" * 15)) == 32
    assert len(sealing.seal_entry_name(keys, 5, b"x" * 16)) == 48
    assert sealing.open_entry_name(keys, 5, a, "n") == b"report.txt"
    with pytest.raises(IntegrityError, match="moved"):
        sealing.open_entry_name(keys, 6, a, "n")
    with pytest.raises(IntegrityError, match="impossible length"):
        sealing.open_entry_name(keys, 5, a[:-1], "n")
    with pytest.raises(ConfigError):
        sealing.seal_entry_name(keys, 5, b"")
    with pytest.raises(ConfigError):
        sealing.seal_entry_name(keys, 5, b"x" * (sealing.MAX_NAME + 1))


def test_unpad_rejects_malformed_padding():
    assert sealing.unpad_name(sealing.pad_name(b"ab\x80\x00")) == b"ab\x80\x00"
    assert sealing.unpad_name(b"abc" + bytes(13)) is None  # no 0x80 marker
    assert sealing.unpad_name(b"\x80" + bytes(31)) is None  # more than one block of padding
    assert sealing.unpad_name(b"abc\x80") is None  # not a multiple of 16


def test_attribute_hash_is_keyed(keys):
    other = Keys.from_master(bytes(1024))
    h = sealing.attribute_hash(keys, b"attrs")
    assert len(h) == 8 and h == sealing.attribute_hash(keys, b"attrs")
    assert h != sealing.attribute_hash(other, b"attrs") and h != sealing.attribute_hash(keys, b"attrz")
