"""Every binary format has its own magic."""

from boxbox import magic


def test_magics_are_distinct_four_bytes() -> None:
    values = list(magic.ALL.values())
    assert len(values) >= 10
    assert len(set(values)) == len(values)
    assert all(len(v) == 4 for v in values)
