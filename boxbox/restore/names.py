"""Names from the store: the safety check, and how they are shown and typed.

A store name is any 1 to 4096 bytes. Restore accepts only single path components
(`check_name`). For people, a name is shown as UTF-8 text with every non-printable or
non-UTF-8 byte as `\\xNN` and a backslash doubled (`show_name`), so a hostile name cannot
put control sequences on a terminal, and the same spelling is read back (`parse_name`).
"""

from __future__ import annotations

import os
import re

from boxbox.errors import IntegrityError

_UNESCAPE_RE = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")


def check_name(name: bytes, where: str) -> None:
    """Refuse a store name that is not one harmless path component."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise IntegrityError(f"{where}: the store sent the unsafe name {name[:80]!r}; refused")


def describe(path: bytes) -> str:
    """A restored path for messages: escaped like `show_name`, "." for the top."""
    return show_name(path) if path else "."


def show_name(name: bytes) -> str:
    """A name as the shell shows it: UTF-8 text, odd bytes as \\xNN, backslash doubled."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in (text if text is not None else name.decode("latin-1")):
        b = ch.encode("utf-8") if text is not None else ch.encode("latin-1")
        if ch == "\\":
            out.append("\\\\")
        elif text is not None and ch.isprintable():
            out.append(ch)
        elif text is None and 0x20 <= b[0] < 0x7F:
            out.append(ch)
        else:
            out.extend(f"\\x{c:02x}" for c in b)
    return "".join(out)


def parse_name(text: str) -> bytes:
    """The inverse of `show_name`: \\xNN and \\\\ escapes, the rest UTF-8."""
    parts = []
    pos = 0
    for mt in _UNESCAPE_RE.finditer(text):
        parts.append(os.fsencode(text[pos:mt.start()]))
        esc = mt.group(1)
        parts.append(b"\\" if esc == "\\" else bytes([int(esc[1:], 16)]))
        pos = mt.end()
    parts.append(os.fsencode(text[pos:]))
    return b"".join(parts)
