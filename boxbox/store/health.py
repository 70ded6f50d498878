"""Whether the store can take backups now: what `GET /health` answers.

A monitor, or a load balancer in front of several servers, wants one yes/no and one line
saying why. The checks are cheap (a few `stat`/`access` calls), so they run on every request:
every directory of every disc set present, a directory, and writable (a disc that fell out
of its mount leaves a missing or read-only directory), and the account database's directory
writable (locks and `accounts create` live there).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import NamedTuple

from boxbox.store.account import Store


class DirectoryState(NamedTuple):
    discset: str
    index: int  # position in the disc set's `directories`: what /metrics labels it by
    path: Path
    problem: str  # "" when present and writable


def _problem(path: Path) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "is missing"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):  # also EROFS: a read-only remount after disc errors
        return "is not writable"
    return ""


def directories(store: Store) -> list[DirectoryState]:
    """Every configured directory of every disc set (all three of a RAID set, even when it is gone)."""
    states = []
    for name in sorted(store.discsets):
        for i, path in enumerate(store.discsets[name].directories):
            states.append(DirectoryState(name, i, path, _problem(path)))
    return states


def problem(store: Store) -> str:
    """The first thing that stops the store taking backups, in one line; "" when healthy."""
    for d in directories(store):
        if d.problem:
            return f"disc set {d.discset}: directory {d.index} ({d.path}) {d.problem}"
    where = store.database.path.parent
    why = _problem(where)
    if why:
        return f"the account database's directory {where} {why}"
    return ""
