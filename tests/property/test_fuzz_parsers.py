"""Mutation fuzzing of every parser over recorded real inputs: only the documented errors, no hang, no blow-up.

Each target takes bytes from `tests.fault.fuzzcorpus` (a recorded real session's frames both ways, the
objects it stored, raidfile stripes, configs, a keys file, a state file), mutates them and
parses. Allowed: `ProtocolError`, `FormatError`, `ConfigError`, `IntegrityError` (and
`PermissionDenied` for a keys file). Anything else, an input that takes over HANG seconds,
or memory that grows by more than GROWTH_MIB fails. The normal suite runs NORMAL inputs per
target; `-m slow` runs SLOW per target (over 100,000 in all). Hypothesis runs the same
targets on mutations it chooses and shrinks.
"""

from __future__ import annotations

import atexit
import io
import os
import random
import resource
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import given, strategies as st

from boxbox.errors import ConfigError, FormatError, IntegrityError, PermissionDenied, ProtocolError
from tests.fault.fuzzcorpus import corpus, mutate

HANG = 2.0
GROWTH_MIB = 200
NORMAL = 600
SLOW = 11_000
PARSE_ERRORS = (ProtocolError, FormatError, ConfigError, IntegrityError)


class Hang(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise Hang()


def _frames(data: bytes) -> None:
    from boxbox.wire import messages as m
    from boxbox.wire.framing import STREAM_TYPES, FrameDecoder
    dec = FrameDecoder()
    step = 1 + len(data) % 4093  # fed in pieces, as a socket would
    for i in range(0, len(data), step):
        dec.feed(data[i:i + step])
        for frame in dec:
            if frame.type not in STREAM_TYPES:  # stream chunks are opaque bytes
                m.decode(*frame)


def _file_store_view(data: bytes) -> None:
    from boxbox.objects.layout import read_file_layout
    read_file_layout(io.BytesIO(data))


def _file_client(data: bytes) -> None:
    from boxbox.objects.file import decode_file
    decode_file(corpus().keys, io.BytesIO(data), io.BytesIO())


def _directory(data: bytes) -> None:
    from boxbox.objects.directory import Directory
    Directory.parse(data)


def _raid_header(data: bytes) -> None:
    from boxbox.raidfile.layout import parse_header
    parse_header(data)


def _state(data: bytes) -> None:
    from boxbox.backup import state
    state.decode(data)


def _config(role: str) -> Callable[[bytes], None]:
    def parse(data: bytes) -> None:
        from boxbox.config import parse_text
        parse_text(data.decode("utf-8", "replace"), role, "<fuzz>")
    return parse


_KEYS_DIR = Path(tempfile.mkdtemp(prefix="boxbox-fuzz-keys-"))
atexit.register(shutil.rmtree, _KEYS_DIR, True)


def _keys_file(data: bytes) -> None:
    from boxbox.crypto.keys import load_keys
    p = _KEYS_DIR / "keys.dat"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    load_keys(p)


def _targets() -> dict[str, tuple[Callable[[bytes], None], Callable[[], list[bytes]], tuple[type, ...]]]:
    c = corpus
    return {
        "frames-to-server": (_frames, lambda: [c().session_to_server], PARSE_ERRORS),
        "frames-to-client": (_frames, lambda: [c().session_to_client], PARSE_ERRORS),
        "file-object-store-view": (_file_store_view, lambda: c().files, PARSE_ERRORS),
        "file-object-client": (_file_client, lambda: c().files, PARSE_ERRORS),
        "directory-object": (_directory, lambda: c().directories, PARSE_ERRORS),
        "raidfile-header": (_raid_header, lambda: c().stripes, PARSE_ERRORS),
        "state-file": (_state, lambda: [c().state_file], PARSE_ERRORS),
        "client-config": (_config("client"), lambda: [c().client_config.encode()], PARSE_ERRORS),
        "server-config": (_config("server"), lambda: [c().server_config.encode()], PARSE_ERRORS),
        "keys-file": (_keys_file, lambda: [c().keys_file], PARSE_ERRORS + (PermissionDenied,)),
    }


TARGETS = _targets()


def fuzz(name: str, count: int, seed: int) -> int:
    """Run `count` mutated inputs through target `name`; returns how many ran."""
    parse, seeds_of, allowed = TARGETS[name]
    seeds = seeds_of()
    assert seeds and all(isinstance(s, bytes) for s in seeds)
    for s in seeds:  # the unmutated inputs are valid
        parse(s)
    rnd = random.Random(seed)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(count):
            data = mutate(rnd, rnd.choice(seeds), seeds)
            signal.setitimer(signal.ITIMER_REAL, HANG)
            try:
                parse(data)
            except allowed:
                pass
            except Hang:
                raise AssertionError(f"{name}: input {i} took over {HANG} s: {data[:200]!r}") from None
            except Exception as e:
                raise AssertionError(f"{name}: input {i} raised {type(e).__name__}: {e}\n{data[:300]!r}") from e
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, old)
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert growth < GROWTH_MIB, f"{name}: peak memory grew by {growth:.0f} MiB"
    return count


#: Targets that expose a bug in code this suite does not own (see docs/RELIABILITY.md).
KNOWN_BUGS: dict[str, str] = {}


def _params() -> list[Any]:
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[n])) if n in KNOWN_BUGS
            else n for n in TARGETS]


@pytest.mark.parametrize("name", _params())
def test_mutations(name: str) -> None:
    assert fuzz(name, NORMAL, seed=hash(name) & 0xFFFF) == NORMAL


@pytest.mark.slow
@pytest.mark.parametrize("name", _params())
def test_mutations_deep(name: str) -> None:
    assert fuzz(name, SLOW, seed=99) == SLOW


def _one(name: str, data: bytes) -> None:
    parse, _, allowed = TARGETS[name]
    try:
        parse(data)
    except allowed:
        pass


def test_config_path_with_unknown_user() -> None:
    from boxbox.config import parse_text
    text = corpus().server_config.replace("certificate = /x/s.crt", "certificate = ~nosuchuser9/s.crt")
    assert "~nosuchuser9" in text
    with pytest.raises(ConfigError, match="certificate"):
        parse_text(text, "server", "<fuzz>")


@given(st.sampled_from([n for n in TARGETS if n not in KNOWN_BUGS]), st.integers(0, 2**32),
       st.lists(st.tuples(st.integers(0, 1 << 20), st.binary(max_size=16)), max_size=4))
def test_hypothesis_edits_of_real_inputs(name: str, which: int, edits: list[tuple[int, bytes]]) -> None:
    seeds = TARGETS[name][1]()
    data = bytearray(seeds[which % len(seeds)])
    for pos, junk in edits:
        pos %= len(data) + 1
        data[pos:pos + len(junk)] = junk
    _one(name, bytes(data))
