"""Properties of the wire format: every message round-trips; malformed input raises only ProtocolError."""

from __future__ import annotations

import re
import struct
import typing

import pytest
from hypothesis import example, given, strategies as st

from boxbox.errors import ProtocolError
from boxbox.wire import messages as m
from boxbox.wire.framing import HEADER, MAX_FRAME_SIZE, STREAM_TYPES, FrameDecoder, encode_frame

_INT_RANGES = {"B": (0, 2**8 - 1), "H": (0, 2**16 - 1), "I": (0, 2**32 - 1), "Q": (0, 2**64 - 1),
               "q": (-2**63, 2**63 - 1)}


def _fixed_strategies(fixed: struct.Struct) -> list[st.SearchStrategy[typing.Any]]:
    out: list[st.SearchStrategy[typing.Any]] = []
    for count, code in re.findall(r"(\d*)([a-zA-Z])", fixed.format[1:]):
        if code == "s":
            out.append(st.binary(min_size=int(count), max_size=int(count)))
        else:
            lo, hi = _INT_RANGES[code]
            out.extend([st.integers(lo, hi)] * int(count or 1))
    return out


_VAR = {"bytes": st.binary(max_size=300), "str": st.text(max_size=100),
        "list_bytes": st.lists(st.binary(max_size=40), max_size=10)}


def message_strategy(spec: m.MessageSpec) -> st.SearchStrategy[typing.Any]:
    parts = _fixed_strategies(spec.fixed) + [_VAR[k] for k in spec.var_kinds]
    return st.tuples(*parts).map(lambda values: spec.cls(*values))


ALL_MESSAGES = st.one_of([message_strategy(spec) for spec in m.CATALOGUE.values()])


@pytest.mark.parametrize("spec", list(m.CATALOGUE.values()), ids=lambda s: s.cls.__name__)
@given(data=st.data())
def test_every_message_round_trips_through_frames(spec: m.MessageSpec, data: st.DataObject) -> None:
    msg = data.draw(message_strategy(spec))
    frame_type, payload = m.encode(msg)
    dec = FrameDecoder()
    dec.feed(encode_frame(frame_type, payload))
    frame = dec.next_frame()
    assert frame is not None and dec.at_boundary()
    assert m.decode(frame.type, frame.payload) == msg


@given(msgs=st.lists(ALL_MESSAGES, max_size=8), cut=st.integers(1, 50))
def test_any_split_of_a_byte_stream_gives_the_same_messages(msgs: list[typing.Any], cut: int) -> None:
    data = b"".join(encode_frame(*m.encode(x)) for x in msgs)
    dec = FrameDecoder()
    got = []
    for i in range(0, len(data), cut):
        dec.feed(data[i:i + cut])
        got.extend(m.decode(f.type, f.payload) for f in dec)
    assert got == msgs


@given(frame_type=st.sampled_from(sorted(m.CATALOGUE)), payload=st.binary(max_size=200))
@example(frame_type=m.ObjectName.ID, payload=struct.pack("<HqQI", 0, 0, 0, 0xFFFFFFFF))
@example(frame_type=m.Error.ID, payload=struct.pack("<II", 1, 2) + b"\xff\xfe")
def test_random_payloads_decode_or_raise_protocol_error(frame_type: int, payload: bytes) -> None:
    try:
        msg = m.decode(frame_type, payload)
    except ProtocolError:
        return
    assert m.encode(msg) == (frame_type, payload)  # whatever decodes is canonical


@given(frame_type=st.integers(0, 0xFFFF).filter(lambda t: t not in m.CATALOGUE), payload=st.binary(max_size=50))
def test_wrong_frame_types_are_refused(frame_type: int, payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        m.decode(frame_type, payload)


@given(msg=ALL_MESSAGES, data=st.data())
def test_truncated_messages_raise_protocol_error(msg: typing.Any, data: st.DataObject) -> None:
    frame_type, payload = m.encode(msg)
    if not payload:
        return
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(ProtocolError):
        m.decode(frame_type, payload[:cut])


@given(chunks=st.lists(st.binary(max_size=64), max_size=20), length=st.integers(0, 2**32 - 1))
def test_random_bytes_never_buffer_beyond_the_limit(chunks: list[bytes], length: int) -> None:
    dec = FrameDecoder(max_frame_size=4096)
    stream = [HEADER.pack(length, 0x10)] + chunks
    try:
        for chunk in stream:
            dec.feed(chunk)
            for frame in dec:
                assert len(frame.payload) <= 4096
                if frame.type not in STREAM_TYPES:
                    try:
                        m.decode(frame.type, frame.payload)
                    except ProtocolError:
                        pass
            assert dec.buffered <= HEADER.size + 4096 + 64
    except ProtocolError:
        assert length > 4096 or dec.buffered > 0


def test_limit_is_one_mebibyte() -> None:
    assert MAX_FRAME_SIZE == 1 << 20


@given(sizes=st.lists(st.integers(0, 200_000), min_size=1, max_size=4), cut=st.integers(1, 70_000))
def test_receiving_in_place_gives_the_same_frames(sizes: list[int], cut: int) -> None:
    """Drive the decoder as the transport does: in place for big frames, feed() otherwise."""
    frames = [(0xFF01, bytes([i % 251]) * n) for i, n in enumerate(sizes)]
    data = memoryview(b"".join(encode_frame(t, p) for t, p in frames))
    dec = FrameDecoder()
    got = []
    pos = 0
    while pos < len(data):
        direct = dec.direct_buffer()
        if direct is None:
            piece = data[pos:pos + cut]
            dec.feed(piece)
        else:
            piece = data[pos:pos + min(cut, len(direct))]
            direct[:len(piece)] = piece
            dec.filled(len(piece))
        pos += len(piece)
        got.extend(dec)
    assert got == frames and dec.at_boundary()
