"""Properties of the client's scanner side: state file round trip and damage, rules vs a reference."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from hypothesis import example, given, strategies as st

from boxbox.backup import state as S
from boxbox.backup.records import InodeMap, Records
from boxbox.backup.rules import Rules
from boxbox.errors import FormatError

# --- state file -------------------------------------------------------------------------

names = st.binary(min_size=1, max_size=12).filter(lambda n: b"/" not in n and b"\0" not in n
                                                  and n not in (b".", b".."))
trees = st.recursive(st.just([]), lambda kids: st.dictionaries(names, kids, max_size=4).map(lambda d: list(d.items())),
                      max_leaves=20)
u64 = st.integers(0, 2**64 - 1)


@st.composite
def records(draw: Any) -> Records:
    recs = Records()
    if not draw(st.booleans()):
        return recs

    def add(name: bytes, children: list[Any]) -> None:
        index = recs.append(name, draw(u64), draw(u64), draw(st.binary(min_size=16, max_size=16)))
        for child_name, grandchildren in children:
            add(child_name, grandchildren)
        recs.close(index)

    add(b"", draw(trees))
    return recs


@st.composite
def inode_maps(draw: Any) -> InodeMap:
    m = InodeMap()
    for ino, store_id in draw(st.dictionaries(u64, st.integers(1, 2**64 - 1), max_size=20)).items():
        m.set(ino, store_id)
    return m


locations = st.builds(S.LocationState, records=records(), inodes=inode_maps(),
                      pending=st.dictionaries(st.binary(min_size=1, max_size=30),
                                              st.floats(allow_nan=False, allow_infinity=False), max_size=5))
states = st.builds(S.ClientState, account=st.integers(0, 2**32 - 1), store_marker=u64,
                   locations=st.dictionaries(st.text(max_size=10), locations, max_size=3))


@given(states)
def test_state_round_trip(state: S.ClientState) -> None:
    assert S.decode(S.encode(state), state.account) == state


def _reseal(blob: bytes) -> bytes:
    head = list(S.HEADER.unpack_from(blob))
    payload = blob[S.HEADER.size:]
    head[6] = len(payload)
    head[7] = hashlib.blake2b(payload, digest_size=16).digest()
    return S.HEADER.pack(*head) + payload


@given(states, st.data())
def test_damaged_state_raises_only_format_error(state: S.ClientState, data: st.DataObject) -> None:
    blob = bytearray(S.encode(state))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(blob)))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and pos < len(blob):
            blob[pos] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del blob[pos:pos + data.draw(st.integers(1, 8))]
        else:
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    # half the time re-seal the payload so the damage reaches the inner parsers
    candidate = _reseal(bytes(blob)) if data.draw(st.booleans()) and len(blob) >= S.HEADER.size else bytes(blob)
    try:
        S.decode(candidate)
    except FormatError:
        pass


@given(st.binary(max_size=200))
@example(b"BXCS")
@example(S.HEADER.pack(b"BXCS", 1, 0, 0, 0, 5, 0, hashlib.blake2b(b"", digest_size=16).digest()))
def test_random_bytes_raise_only_format_error(blob: bytes) -> None:
    try:
        S.decode(blob)
    except FormatError:
        pass


# --- rules --------------------------------------------------------------------------------

ROOT = "/r"
parts = st.sampled_from(["a", "b", "ab", "x.mp3", "tmp", "é", "\udcff"])
rel_paths = st.lists(parts, min_size=1, max_size=4).map("/".join)
full_paths = rel_paths.map(lambda p: f"{ROOT}/{p}")
# exact entries as a user might write them: absolute or relative, with stray slashes
written = st.one_of(full_paths, rel_paths, full_paths.map(lambda p: p.replace("/", "//") + "/"))
regexes = st.one_of(st.sampled_from([r"\.mp3$", "^/r/a", "tmp", "b/", "^/r/[^/]+$", "é", ".*", "(?i)AB"]),
                    parts.map(re.escape))


def _reference_normalise(p: str) -> str:
    if not p.startswith("/"):
        p = ROOT + "/" + p
    return "/" + "/".join(x for x in p.split("/") if x)


def reference_excluded(spec: dict[str, list[str]], path: str, is_dir: bool) -> bool:
    """The documented order, written as plainly as possible."""
    if path == ROOT:
        return False
    kind = "dirs" if is_dir else "files"

    def matches(prefix: str) -> bool:
        exact = [_reference_normalise(p) for p in spec[f"{prefix}_{kind}"]]
        return path in exact or any(re.search(r, path) for r in spec[f"{prefix}_{kind}_regex"])

    return matches("exclude") and not matches("always_include")


specs = st.fixed_dictionaries({
    **{f"{side}_{kind}": st.lists(written, max_size=3) for side in ("exclude", "always_include")
       for kind in ("files", "dirs")},
    **{f"{side}_{kind}_regex": st.lists(regexes, max_size=3) for side in ("exclude", "always_include")
       for kind in ("files", "dirs")},
})


@given(specs, st.lists(st.tuples(st.one_of(full_paths, st.just(ROOT)), st.booleans()), min_size=1, max_size=10))
def test_rules_agree_with_reference(spec: dict[str, list[str]], entries: list[tuple[str, bool]]) -> None:
    rules = Rules(ROOT, **spec)  # type: ignore[arg-type]
    for path, is_dir in entries:
        assert rules.excluded(path, is_dir) == reference_excluded(spec, path, is_dir), (path, is_dir)
