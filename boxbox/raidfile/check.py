"""Checking a raidfile stripe by stripe, and recovering temps left by a killed process.

`check` verifies every record of every stripe (not only what a read would touch) and says
per directory what it found; a file is readable when no row of blocks has two bad members.
`recover_stale` settles temps whose writer died (their flock is free): a temp is renamed
into place when it belongs to the write the committed stripes agree on, or when it and the
committed stripes together are the only complete write and that write had reached its
first rename (so all its temps were fsynced, see `boxbox.raidfile.writer`); any other
stale temp is removed. Temps rolled forward are verified block by block first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from boxbox.atomic import fsync_dir
from boxbox.errors import FormatError, NotFound
from boxbox.raidfile import claims
from boxbox.raidfile.layout import HEADER, PARITY, RAID_ROLES, ROLE_NAMES, STRIPE1, STRIPE2, WHOLE, Geometry, Header, \
    crc_seed, parse_header
from boxbox.raidfile.reader import CHUNK_BYTES, MAX_RECORDS, Finals, read_records

OK, MISSING, STALE, DAMAGED = "ok", "missing", "stale", "damaged"


@dataclass(frozen=True)
class StripeState:
    """What one directory holds for a raidfile."""

    directory: int
    role: str | None  # "stripe 1", "stripe 2", "parity", "whole file"; None when unknown
    state: str  # ok | missing | stale | damaged
    detail: str = ""
    bad_blocks: int = 0


@dataclass(frozen=True)
class StripeReport:
    """The state of one raidfile: per directory, whether it can be read, whether repair ran."""

    relpath: str
    stripes: tuple[StripeState, ...]
    length: int | None
    readable: bool
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return self.readable and all(s.state == OK for s in self.stripes)

    def __str__(self) -> str:
        if self.ok:
            return f"{self.relpath}: ok"
        bad = "; ".join(f"directory {s.directory} ({s.role or 'unknown'}): {s.state}{': ' + s.detail if s.detail else ''}"
                        for s in self.stripes if s.state != OK)
        verdict = "repaired" if self.repaired else ("readable" if self.readable else "UNRECOVERABLE")
        return f"{self.relpath}: {verdict}: {bad}"


def verify_stripe(fd: int, geo: Geometry, role: int, write_id: bytes) -> tuple[set[int], str]:
    """Indexes of bad records of one stripe, and a one-line reason ('' if none)."""
    B = geo.block_size
    total = geo.records(role)
    # never more slots than the stripe has records: small files dominate a scrub, and building
    # CHUNK_BYTES/(2B) views for each cost ~190 us of its ~260 us (docs/STORE.md)
    per = max(1, min(MAX_RECORDS, CHUNK_BYTES // (2 * B), total))
    buf = memoryview(bytearray(per * B))
    crc = bytearray(4 * per)
    crcviews = [memoryview(crc)[i : i + 4] for i in range(0, 4 * per, 4)]
    seed = crc_seed(write_id, role)
    size = geo.data_bytes(role)  # bytes of records before the last, plus the last
    bad: set[int] = set()
    why = ""
    for first in range(0, total, per):
        k = min(per, total - first)
        last = size - (total - 1) * B if first + k == total else B
        slots = [buf[j * B : (j + 1) * B] for j in range(k - 1)] + [buf[(k - 1) * B : (k - 1) * B + last]]
        b, reason = read_records(fd, geo, first, slots, seed, crc, crcviews)
        bad |= {first + j for j in b}
        why = why or (reason or "")
    actual = os.fstat(fd).st_size
    if actual > geo.file_size(role):
        why = why or f"{actual - geo.file_size(role)} bytes of trailing garbage"
    return bad, why


def _readable(b1: set[int] | None, b2: set[int] | None, bp: set[int] | None, n2: int) -> bool:
    """Every row has what it needs: both data blocks, or one of them and parity (None: stripe absent)."""
    if b1 is None:
        return b2 is not None and bp is not None and not b2 and not bp
    if b2 is None:
        return bp is not None and not b1 and not {j for j in bp if j < n2}
    if bp is None:
        return not (b1 & b2)
    return not (b1 & b2) and not ((b1 | b2) & bp)


def check_finals(relpath: str, f: Finals) -> StripeReport:
    """Verify every stripe of an opened raidfile."""
    n = len(f.paths)
    h = f.chosen
    if h is None:
        states = tuple(StripeState(i, None, MISSING if f.fds[i] is None else DAMAGED, f.problems[i] or "")
                       for i in range(n))
        return StripeReport(relpath, states, None, False)
    geo = Geometry(h.length, h.block_size)
    role_of = {i: r for r, i in f.by_role.items()}
    bad_rows: dict[int, set[int] | None] = {r: None for r in (RAID_ROLES if f.raid else (WHOLE,))}
    states = []
    absent = [r for r in RAID_ROLES if r not in f.by_role] if f.raid else []
    for i in range(n):
        role = role_of.get(i)
        fd = f.fds[i]
        if role is None or fd is None:
            missing = fd is None and f.problems[i] == "missing"
            stale = (f.problems[i] or "").startswith("stale")
            if f.raid or fd is not None:
                name = ROLE_NAMES[absent.pop(0)] if absent else None
                detail = "" if missing else (f.problems[i] or "").removeprefix("stale: ")
                states.append(StripeState(i, name, MISSING if missing else STALE if stale else DAMAGED, detail))
            continue
        bad, why = verify_stripe(fd, geo, role, h.write_id)
        bad_rows[role] = bad
        state = DAMAGED if (bad or why) else OK
        states.append(StripeState(i, ROLE_NAMES[role], state, why, len(bad)))
    if f.raid:
        readable = _readable(bad_rows[STRIPE1], bad_rows[STRIPE2], bad_rows[PARITY], geo.records(STRIPE2))
    else:
        readable = not bad_rows[WHOLE]
    return StripeReport(relpath, tuple(states), h.length, readable)


def _temp_header(fd: int) -> Header | None:
    try:
        return parse_header(os.pread(fd, HEADER.size, 0))
    except (FormatError, OSError):
        return None


def _intact(fd: int, h: Header) -> bool:
    geo = Geometry(h.length, h.block_size)
    bad, why = verify_stripe(fd, geo, h.role, h.write_id)
    return not bad and not why and os.fstat(fd).st_size == geo.file_size(h.role)


def recover_stale(finals: list[str], temps: list[str], open_finals) -> bool:  # type: ignore[no-untyped-def]
    """Finish or undo what a killed process left in temps; True if a live change holds a temp."""
    held: dict[int, int] = {}
    live = False
    for i, t in enumerate(temps):
        fd, busy = claims.lock_existing(t)
        if fd is not None:
            held[i] = fd
        live = live or busy
    if not held:
        return live
    roll: set[int] = set()
    try:
        heads = {i: _temp_header(fd) for i, fd in held.items()}
        try:
            f: Finals | None = open_finals()
        except NotFound:
            f = None
        if f is not None and f.chosen is not None:
            want = f.chosen.write_id
            for i, h in heads.items():
                if h is not None and h.write_id == want and f.by_role.get(h.role, i) == i and _intact(held[i], h):
                    roll.add(i)
        elif len(temps) == 3:
            fheads = f.headers if f is not None else [None, None, None]
            for wid in sorted({h.write_id for h in fheads if h is not None}):
                cand = {i for i, h in heads.items() if h is not None and h.write_id == wid}
                kept = [h.role for i, h in enumerate(fheads) if h is not None and h.write_id == wid and i not in cand]
                roles = kept + [heads[i].role for i in cand]  # type: ignore[union-attr]
                if cand and len(roles) >= 2 and len(set(roles)) == len(roles) and set(roles) <= set(RAID_ROLES):
                    roll = {i for i in cand if _intact(held[i], heads[i])}  # type: ignore[arg-type]
                    break
        if f is not None:
            f.close()
        for i in sorted(roll, key=lambda i: heads[i].role):  # type: ignore[union-attr]
            os.replace(temps[i], finals[i])
        for i in roll:
            fsync_dir(os.path.dirname(finals[i]))
    finally:
        for i, fd in held.items():
            claims.release(fd, None if i in roll else temps[i])
    return live
