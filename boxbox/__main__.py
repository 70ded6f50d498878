"""`boxbox ROLE ...`: parse the role and hand over to `boxbox.roles.<role>`.

The role table is lazy: only the chosen role module is imported, so `boxbox --help` does
not load `cryptography` or the store. This is also the one error boundary.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from typing import Sequence

from boxbox import __version__, logs
from boxbox.errors import BoxboxError

ROLES: dict[str, tuple[str, str]] = {
    "quickstart": ("boxbox.roles.quickstart", "one command from nothing to a first backup on this machine"),
    "client": ("boxbox.roles.client", "backup daemon (bbackupd)"),
    "ctl": ("boxbox.roles.ctl", "control a running client (bbackupctl)"),
    "query": ("boxbox.roles.query", "browse and restore backups (bbackupquery)"),
    "server": ("boxbox.roles.server", "store daemon (bbstored)"),
    "accounts": ("boxbox.roles.accounts", "administer store accounts (bbstoreaccounts)"),
    "ca": ("boxbox.roles.ca", "certificate authority (bbstored-certs)"),
    "config": ("boxbox.roles.config", "print example configs, check a config file"),
}


def available_roles() -> dict[str, tuple[str, str]]:
    """Roles whose module is present, found without importing them."""
    return {name: entry for name, entry in ROLES.items() if importlib.util.find_spec(entry[0]) is not None}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """Usage mistakes: the usage line, one `boxbox: ...` line, exit 2 (argparse's convention)."""
        self.print_usage(sys.stderr)
        sys.stderr.write(f"boxbox: {message}\n")
        raise SystemExit(2)


def build_parser(roles: dict[str, tuple[str, str]]) -> tuple[_Parser, argparse._SubParsersAction]:
    parser = _Parser(
        prog="boxbox",
        description="Encrypted, always-on backup for small servers.",
        epilog="Run `boxbox ROLE --help` for the options of a role.",
    )
    parser.add_argument("--version", action="version", version=f"boxbox {__version__}")
    parser.add_argument("--log-level", choices=sorted(logs.LEVELS), default=None, help="log verbosity on stderr")
    sub = parser.add_subparsers(dest="role", metavar="ROLE", parser_class=_Parser)
    sub.required = True
    for name, (_, help_text) in roles.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser, sub


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    roles = available_roles()
    parser, sub = build_parser(roles)
    # First pass: only the role name (and global flags); the role's own parser does the rest.
    ns, rest = parser.parse_known_args(argv)
    module = importlib.import_module(roles[ns.role][0])
    role_parser = _Parser(prog=f"boxbox {ns.role}", description=roles[ns.role][1])
    module.add_arguments(role_parser)
    args = role_parser.parse_args(rest)
    args.global_log_level = ns.log_level
    logs.configure(ns.log_level or getattr(args, "log_level", None) or "warning")
    try:
        return int(module.main(args) or 0)
    except BoxboxError as e:
        sys.stderr.write(f"boxbox: {e}\n")
        if e.hint:
            sys.stderr.write(f"hint: {e.hint}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("boxbox: interrupted\n")
        return 130
    except BrokenPipeError:
        return 1
    except Exception:  # a bug: show everything
        logging.getLogger("boxbox").exception("internal error in boxbox %s", __version__)
        return 2


if __name__ == "__main__":
    sys.exit(main())
