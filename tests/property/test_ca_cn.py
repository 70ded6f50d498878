"""Client certificate CN <-> account number: a strict bijection on 32-bit accounts."""

from __future__ import annotations

import pytest
from hypothesis import example, given, strategies as st

from boxbox.ca.names import MAX_ACCOUNT, account_from_cn, cn_for_account, parse_account
from boxbox.errors import FormatError, UsageError

accounts = st.integers(min_value=0, max_value=MAX_ACCOUNT)


@given(accounts)
@example(0)
@example(MAX_ACCOUNT)
def test_cn_round_trips_account(account: int) -> None:
    cn = cn_for_account(account)
    assert len(cn) == len("BACKUP-") + 8
    assert account_from_cn(cn) == account


@given(st.one_of(st.text(max_size=20), accounts.map(lambda n: f"BACKUP-{n:08X}"),
                 accounts.map(lambda n: f"BACKUP-{n:x}"), accounts.map(lambda n: f"BACKUP-{n:08x} ")))
@example("BACKUP-0000000A")
@example("BACKUP-1")
@example("BACKUP-00000001\n")
@example("BACKUP-+0000001")
@example("backup-00000001")
def test_only_the_canonical_cn_parses(cn: str) -> None:
    """Two CNs never name one account: anything that parses is exactly what we would issue."""
    try:
        account = account_from_cn(cn)
    except FormatError:
        return
    assert cn_for_account(account) == cn


@given(accounts, st.sampled_from(["{:x}", "{:X}", "{:08x}", "0x{:x}"]))
def test_typed_hex_account_parses(account: int, fmt: str) -> None:
    assert parse_account(fmt.format(account)) == account


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_ACCOUNT + 1)))
def test_out_of_range_account_is_refused(account: int) -> None:
    with pytest.raises(UsageError):
        cn_for_account(account)


@given(st.text(max_size=12))
@example("100000000")
@example("")
@example("-1")
def test_typed_account_is_hex_or_refused(text: str) -> None:
    try:
        account = parse_account(text)
    except UsageError:
        return
    assert 0 <= account <= MAX_ACCOUNT
    assert account == int(text.strip().removeprefix("0x"), 16)
