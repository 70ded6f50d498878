"""The CA's record of what it issued (`issued.json`): serial, kind, CN, expiry, revocation.

It is the source of serial numbers and of the CRL, so it is written atomically and only
under the CA directory's lock. Layout (JSON, UTF-8):

    {"format": "boxbox-ca-index", "version": 1, "next_serial": 3, "crl_number": 2,
     "issued": [{"serial": 1, "kind": "server", "cn": "backup.example.com",
                 "not_after": "2036-01-01T00:00:00Z", "revoked": null}, ...]}
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from boxbox.atomic import write_atomic
from boxbox.errors import FormatError, InUse

INDEX_NAME = "issued.json"
LOCK_NAME = ".lock"
FORMAT = "boxbox-ca-index"
VERSION = 1
SUPPORTED_VERSIONS = {1}
KINDS = ("server", "client")


def format_time(t: dt.datetime) -> str:
    """UTC timestamps as ISO 8601 with a Z, to the second."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str, where: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    except (TypeError, ValueError):
        raise FormatError(f"{where}: expected a time like 2036-01-01T00:00:00Z, got {text!r}") from None


@dataclass
class Issued:
    """One certificate the CA signed."""

    serial: int
    kind: str
    cn: str
    not_after: dt.datetime
    revoked: dt.datetime | None = None

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["not_after"] = format_time(self.not_after)
        d["revoked"] = format_time(self.revoked) if self.revoked else None
        return d


@dataclass
class Index:
    """Everything the CA remembers between runs."""

    next_serial: int = 1
    crl_number: int = 1
    issued: list[Issued] = field(default_factory=list)

    def find(self, serial: int) -> Issued | None:
        return next((i for i in self.issued if i.serial == serial), None)


def load(cadir: Path) -> Index:
    """Read and check `issued.json`; a missing file is an empty index (a fresh CA)."""
    path = cadir / INDEX_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Index()
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: not a JSON CA index ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else raw
        raise FormatError(f"{path}: expected format {FORMAT!r}, got {got!r}")
    if raw.get("version") not in SUPPORTED_VERSIONS:
        raise FormatError(f"{path}: index version {raw.get('version')!r} not supported "
                          f"(expected one of {sorted(SUPPORTED_VERSIONS)})")
    try:
        index = Index(next_serial=_int(raw["next_serial"]), crl_number=_int(raw["crl_number"]))
        for n, entry in enumerate(raw["issued"]):
            where = f"{path}: issued[{n}]"
            if entry["kind"] not in KINDS or not isinstance(entry["cn"], str):
                raise FormatError(f"{where}: bad kind {entry['kind']!r} or cn {entry['cn']!r}")
            revoked = None if entry["revoked"] is None else parse_time(entry["revoked"], where + ".revoked")
            index.issued.append(Issued(_int(entry["serial"]), entry["kind"], entry["cn"],
                                       parse_time(entry["not_after"], where + ".not_after"), revoked))
    except (KeyError, TypeError) as e:
        raise FormatError(f"{path}: missing or mistyped field {e}") from None
    return index


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"expected a non-negative integer, got {value!r}")
    return value


def save(cadir: Path, index: Index) -> None:
    data = {"format": FORMAT, "version": VERSION, "next_serial": index.next_serial,
            "crl_number": index.crl_number, "issued": [i.to_json() for i in index.issued]}
    write_atomic(cadir / INDEX_NAME, (json.dumps(data, indent=1) + "\n").encode(), mode=0o644)


@contextlib.contextmanager
def locked(cadir: Path) -> Iterator[None]:
    """Hold the CA directory's lock, so two signers never hand out the same serial."""
    fd = os.open(cadir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InUse(f"CA directory {cadir} is locked by another `boxbox ca` process") from None
        yield
    finally:
        os.close(fd)
