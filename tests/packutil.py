"""Helpers shared by the pack tests of both stores (RAID: test_raid_packs.py, S3: test_s3_packs.py)."""

from __future__ import annotations

from typing import Any


def commit_new(store: Any, items: dict[str, bytes]) -> list[Any]:
    """New objects committed as a session does (exclusive, durable=False), before the barrier."""
    puts = []
    for k, data in items.items():
        p = store.put(k, exclusive=True)
        p.write(data)
        p.commit(durable=False)
        puts.append(p)
    return puts


def batch(store: Any, items: dict[str, bytes]) -> None:
    """New objects committed as a session does, then the barrier."""
    store.sync(commit_new(store, items))
