"""Properties of sealing: names round-trip for any bytes, padding agrees with a plain version, flips are caught."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from boxbox.crypto import seal as sealing
from boxbox.crypto.keys import Keys
from boxbox.errors import IntegrityError

KEYS = Keys.from_master(bytes(range(256)) * 4)
names = st.binary(min_size=1, max_size=sealing.MAX_NAME)
dir_ids = st.integers(0, 2**64 - 1)


def plain_unpad(padded: bytes) -> bytes | None:
    """Reference: try every split; the name is whatever pad_name maps back onto the input."""
    for cut in range(len(padded), -1, -1):
        if sealing.pad_name(padded[:cut]) == padded:
            return padded[:cut]
    return None


@given(st.binary(max_size=80))
@example(b"\x80")
@example(b"abc\x80" + bytes(12))
@example(bytes(16))
def test_unpad_agrees_with_plain_version(data):
    assert sealing.unpad_name(data) == plain_unpad(data)
    assert sealing.unpad_name(sealing.pad_name(data)) == data


@given(names, dir_ids)
@example(b"\x00", 0)
@example(b"\xff" * 255, 2**64 - 1)
def test_name_roundtrip_and_determinism(name, dir_id):
    sealed = sealing.seal_entry_name(KEYS, dir_id, name)
    assert sealed == sealing.seal_entry_name(KEYS, dir_id, name)
    assert len(sealed) == 16 + (len(name) // 16 + 1) * 16
    assert sealing.open_entry_name(KEYS, dir_id, sealed, "n") == name


@given(names, dir_ids, st.data())
def test_any_flip_of_a_sealed_name_is_detected(name, dir_id, data):
    sealed = bytearray(sealing.seal_entry_name(KEYS, dir_id, name))
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
    sealed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(IntegrityError, match="entry 5"):
        sealing.open_entry_name(KEYS, dir_id, bytes(sealed), "entry 5")


@given(st.binary(max_size=2000), st.binary(max_size=40), st.sampled_from(sorted(sealing.CIPHERS)), st.data())
def test_seal_roundtrip_and_flip(plaintext, aad, cid, data):
    aead = sealing.aead(KEYS, data.draw(st.sampled_from(["data", "index"])), cid)
    sealed = sealing.seal(aead, plaintext, aad)
    assert sealing.unseal(aead, sealed, aad, "x") == plaintext
    bad = bytearray(sealed)
    bit = data.draw(st.integers(0, len(bad) * 8 - 1))
    bad[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(IntegrityError):
        sealing.unseal(aead, bytes(bad), aad, "x")
