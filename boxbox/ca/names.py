"""Account numbers and the client certificate CN that carries them: `BACKUP-%08x`.

The server takes the account from the certificate CN, never from a request field, so the
mapping is a strict bijection: exactly 8 lowercase hex digits, nothing else parses.
"""

from __future__ import annotations

import re

from boxbox.errors import FormatError, UsageError

CN_PREFIX = "BACKUP-"
MAX_ACCOUNT = 0xFFFFFFFF  # accounts are 32-bit, as in Box Backup
_CN = re.compile(r"BACKUP-([0-9a-f]{8})")
_ACCOUNT = re.compile(r"(?:0x)?([0-9a-fA-F]{1,8})")


def cn_for_account(account: int) -> str:
    """The client certificate common name for `account`."""
    if not 0 <= account <= MAX_ACCOUNT:
        raise UsageError(f"account number must be 0..{MAX_ACCOUNT:x} (hex), got {account:x}")
    return f"{CN_PREFIX}{account:08x}"


def account_from_cn(cn: str) -> int:
    """The account a client certificate CN names; anything but the canonical form is refused."""
    m = _CN.fullmatch(cn)
    if m is None:
        raise FormatError(f"certificate CN {cn!r} is not of the form BACKUP-%08x (e.g. BACKUP-0000000a)")
    return int(m.group(1), 16)


def parse_account(text: str) -> int:
    """An account number typed by a user: hex like Box Backup (`1`, `0a1`, `0x1f`)."""
    m = _ACCOUNT.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"account number must be 1 to 8 hex digits (like 1 or 0a1), got {text!r}")
    return int(m.group(1), 16)
