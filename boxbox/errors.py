"""The one exception hierarchy: every user-facing failure is a BoxboxError.

The class docstring is the message template; `exit_code` is what the process exits with
when the error reaches the boundary in `boxbox.__main__`. This module imports nothing
from boxbox so that every other module can import it.
"""

from __future__ import annotations


class BoxboxError(Exception):
    """{0}"""

    exit_code = 1
    #: stable code used when the error travels over the wire
    wire_code = 1

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        self.hint = hint

    def __str__(self) -> str:
        template = (type(self).__doc__ or "{0}").strip().splitlines()[0]
        try:
            return template.format(*self.args)
        except (IndexError, KeyError, ValueError):
            return " ".join(str(a) for a in self.args) or template


class ConfigError(BoxboxError):
    """{0}"""

    wire_code = 2


class UsageError(BoxboxError):
    """{0}"""

    exit_code = 2
    wire_code = 3


class FormatError(BoxboxError):
    """malformed data: {0}"""

    wire_code = 4


class IntegrityError(BoxboxError):
    """integrity check failed: {0}"""

    wire_code = 5


class ProtocolError(BoxboxError):
    """protocol error: {0}"""

    wire_code = 6


class PermissionDenied(BoxboxError):
    """permission denied: {0}"""

    wire_code = 7


class LimitExceeded(BoxboxError):
    """limit exceeded: {0}"""

    wire_code = 8


class NotFound(BoxboxError):
    """not found: {0}"""

    wire_code = 9


class InUse(BoxboxError):
    """in use: {0}"""

    wire_code = 10


class ProgrammingError(BoxboxError):
    """internal error (a bug in boxbox): {0}"""

    exit_code = 2
    wire_code = 11


class StorageError(BoxboxError):
    """storage error: {0}"""

    wire_code = 12


class PreconditionFailed(StorageError):
    """object store precondition failed: {0}"""

    wire_code = 13
    #: True when the request was sent more than once: the 412 may answer our own lost success
    retried = False


#: errno -> how the store names it to the client
_STORAGE_CAUSES = {
    "ENOSPC": "store disc full (ENOSPC)",
    "EDQUOT": "store disc quota exceeded (EDQUOT)",
    "EIO": "store disc I/O error (EIO)",
    "EROFS": "store disc is read-only (EROFS)",
}


def storage_error(e: OSError, what: str) -> StorageError:
    """A storage OSError as a StorageError that names the cause and what was being done."""
    import errno as errno_mod

    name = errno_mod.errorcode.get(e.errno or 0, "")
    cause = _STORAGE_CAUSES.get(name) or f"store disc error ({name or e.errno}: {e.strerror or e})"
    hint = "free space on the store's discs, then run the backup again" if name in ("ENOSPC", "EDQUOT") else (
        "see the store's log; run the backup again once the disc is fixed")
    return StorageError(f"{cause} {what}", hint=hint)


def all_error_classes() -> list[type[BoxboxError]]:
    """Every error class, so the wire layer can map codes back to classes."""
    seen: list[type[BoxboxError]] = [BoxboxError]
    stack = [BoxboxError]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in seen:
                seen.append(sub)
                stack.append(sub)
    return seen
