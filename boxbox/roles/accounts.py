"""`boxbox accounts`: create, inspect, limit, rename, enable/disable, delete, housekeep and check accounts.

Works while the server runs: the account database is replaced atomically under a lock and
the server re-reads it on the next login; info edits take the account's info lock, and
deleting an account takes its writer lock (refused while a client is writing). `housekeep`
and `check` take the account's writer lock too; housekeeping lets go of it when a client
logs in, check does not (the client waits, then is refused with "being checked").

`check` exit codes (like fsck, but distinct from boxbox's own 1 and 2): 0 clean,
3 errors found and all fixed, 4 errors remain (found without --fix, or not repairable).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from boxbox import config
from boxbox.ca.names import parse_account
from boxbox.config import format_size, parse_size
from boxbox.errors import UsageError
from boxbox.store.account import Store
from boxbox.store.info import BLOCK_SIZE, AccountInfo, blocks_for_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="/etc/boxbox/server.conf", help="server config file")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("create", help="create an account with an empty root directory")
    p.add_argument("account", help="account number in hex (the client certificate's BACKUP-%%08x)")
    p.add_argument("--soft", required=True, help="soft limit, like 10G: housekeeping trims down to it")
    p.add_argument("--hard", required=True, help="hard limit, like 12G: uploads beyond it are refused")
    p.add_argument("--discset", default=None, help="disc set or S3 store name (default: the only one, or '0')")
    p.add_argument("--name", default="", help="a label for the account")
    p = sub.add_parser("info", help="limits and usage of an account")
    p.add_argument("account")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("list", help="every account, one line each")
    p = sub.add_parser("setlimit", help="change the soft and/or hard limit")
    p.add_argument("account")
    p.add_argument("--soft", default=None)
    p.add_argument("--hard", default=None)
    p = sub.add_parser("name", help="set the account's label")
    p.add_argument("account")
    p.add_argument("name")
    for action, text in (("enable", "allow the account's client to log in"),
                         ("disable", "refuse logins to the account (data is kept)")):
        sub.add_parser(action, help=text).add_argument("account")
    p = sub.add_parser("delete", help="delete the account and every object in it")
    p.add_argument("account")
    p.add_argument("--yes", action="store_true", help="really delete (required)")
    p = sub.add_parser("retention", help="keep old versions for a time even under the soft limit")
    p.add_argument("account")
    p.add_argument("--keep-days", type=_count, default=None,
                   help="keep old and deleted versions at least this many days, trim them after (0: off)")
    p.add_argument("--keep-versions", type=_count, default=None,
                   help="never trim the newest N old versions of a file by age (0: off)")
    p = sub.add_parser("housekeep", help="trim old versions and deleted files now; recount usage")
    p.add_argument("account", nargs="?")
    p.add_argument("--all", action="store_true", help="every account")
    p = sub.add_parser("check", help="verify every object and directory; repair with --fix")
    p.add_argument("account", nargs="?")
    p.add_argument("--all", action="store_true", help="every account, with --scrub")
    p.add_argument("--scrub", action="store_true",
                   help="verify every stripe checksum, parity too (silent disc corruption); slower")
    p.add_argument("--fix", action="store_true", help="repair what is wrong (default: change nothing)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


#: `check` exit codes
CLEAN, FIXED, ERRORS_REMAIN = 0, 3, 4


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= n <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"expected 0 to 4294967295, got {n}")
    return n


def _blocks(text: str, what: str) -> int:
    try:
        return blocks_for_bytes(parse_size(text))
    except ValueError as e:
        raise UsageError(f"{what}: {e}") from None


def _size(blocks: int) -> str:
    n = blocks * BLOCK_SIZE
    for unit, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n}B"


def _info_dict(info: AccountInfo, discset: str) -> dict[str, object]:
    d = info._asdict()
    d["account"] = f"{info.account:08x}"
    d["discset"] = discset
    d["block_size"] = BLOCK_SIZE
    return d


def _print_info(info: AccountInfo, discset: str) -> None:
    pct = 100.0 * info.blocks_used / info.hard_limit if info.hard_limit else 0.0
    rows = [
        ("account", f"{info.account:08x}"),
        ("name", info.name or "-"),
        ("disc set", discset),
        ("enabled", "yes" if info.enabled else "no"),
        ("used", f"{_size(info.blocks_used)} ({info.blocks_used} blocks, {pct:.1f}% of hard limit)"),
        ("soft limit", f"{_size(info.soft_limit)} ({info.soft_limit} blocks)"),
        ("hard limit", f"{_size(info.hard_limit)} ({info.hard_limit} blocks)"),
        ("current files", f"{info.count_current} files, {_size(info.blocks_current)}"),
        ("old versions", f"{info.count_old} files, {_size(info.blocks_old)}"),
        ("deleted files", f"{info.count_deleted} files, {_size(info.blocks_deleted)}"),
        ("directories", f"{info.count_directories} directories, {_size(info.blocks_directories)}"),
        ("retention", f"{info.keep_versions_days} days, at least {info.keep_min_versions} versions"
         if info.keep_versions_days or info.keep_min_versions else "none (only the soft limit trims)"),
        ("last object id", f"{info.last_object_id:#x}"),
        ("client store marker", f"{info.client_store_marker:#x}"),
    ]
    for key, value in rows:
        print(f"{key + ':':<21}{value}")


def main(args: argparse.Namespace) -> int:
    cfg = config.load(args.config, "server")
    store = Store.from_config(cfg)
    action = args.action
    if action == "list":
        for account, discset in sorted(store.database.accounts().items()):
            info = store.read_info(account)
            state = "enabled" if info.enabled else "disabled"
            print(f"{account:08x}  {discset:<8} {state:<8} used {_size(info.blocks_used):>8} of "
                  f"{_size(info.hard_limit):>8}  {info.name}")
        return 0
    if action in ("housekeep", "check"):
        return _maintain(store, args)
    account = parse_account(args.account)
    if action == "create":
        discset = args.discset
        if discset is None:
            discset = next(iter(store.backends)) if len(store.backends) == 1 else "0"
        info = store.create_account(account, _blocks(args.soft, "--soft"), _blocks(args.hard, "--hard"),
                                    discset, args.name)
        print(f"account {account:08x} created on disc set {discset}: soft {format_size(info.soft_limit * BLOCK_SIZE)}, "
              f"hard {format_size(info.hard_limit * BLOCK_SIZE)}")
    elif action == "info":
        info = store.read_info(account)
        discset = store.database.discset_of(account)
        if args.json:
            json.dump(_info_dict(info, discset), sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            _print_info(info, discset)
    elif action == "setlimit":
        if args.soft is None and args.hard is None:
            raise UsageError("setlimit needs --soft, --hard or both")
        changes = {}
        if args.soft is not None:
            changes["soft_limit"] = _blocks(args.soft, "--soft")
        if args.hard is not None:
            changes["hard_limit"] = _blocks(args.hard, "--hard")
        info = store.update_info(account, **changes)
        print(f"account {account:08x}: soft {_size(info.soft_limit)}, hard {_size(info.hard_limit)}")
    elif action == "name":
        store.update_info(account, name=args.name)
    elif action in ("enable", "disable"):
        store.update_info(account, enabled=action == "enable")
        print(f"account {account:08x} {action}d")
    elif action == "delete":
        if not args.yes:
            raise UsageError(f"deleting account {account:08x} removes all its backups; add --yes to do it")
        removed = store.delete_account(account)
        print(f"account {account:08x} deleted ({removed} objects removed)")
    elif action == "retention":
        if args.keep_days is None and args.keep_versions is None:
            raise UsageError("retention needs --keep-days, --keep-versions or both")
        changes = {}
        if args.keep_days is not None:
            changes["keep_versions_days"] = args.keep_days
        if args.keep_versions is not None:
            changes["keep_min_versions"] = args.keep_versions
        info = store.update_info(account, **changes)
        print(f"account {account:08x}: keep old versions {info.keep_versions_days} days, "
              f"at least {info.keep_min_versions} per file")
    return 0


def _targets(store: Store, args: argparse.Namespace) -> list[int]:
    if args.all == (args.account is not None):
        raise UsageError(f"{args.action} needs an ACCOUNT or --all (not both)")
    if args.all:
        return sorted(store.database.accounts())
    account = parse_account(args.account)
    store.database.discset_of(account)  # NotFound for an unknown account
    return [account]


def _progress(account: int) -> Callable[[int, int], None] | None:
    """A progress line on a terminal (stderr), rewritten in place; None when not a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\r\033[K" if done >= total else ""
        sys.stderr.write(f"\rchecking {account:08x}: {done}/{total} objects{end}")
        sys.stderr.flush()

    return show


def _maintain(store: Store, args: argparse.Namespace) -> int:
    from boxbox.store.check import check_account
    from boxbox.store.housekeep import housekeep

    accounts = _targets(store, args)
    if args.action == "housekeep":
        for account in accounts:
            result = housekeep(store, account, force=True)
            print(result.summary())
            for problem in result.errors:
                print(f"  {problem}")
        return 0
    reports = []
    for account in accounts:
        report = check_account(store, account, fix=args.fix, scrub=args.scrub or args.all,
                               progress=None if args.json else _progress(account))
        reports.append(report)
        if not args.json:
            for problem in report.problems:
                print(f"  {problem}")
            for note in report.pending:
                print(f"  pending: {note}")
            print(f"account {account:08x}: {report.objects} objects ({report.directories} directories, "
                  f"{report.files} files), {report.errors} errors, {report.errors - report.remaining} fixed, "
                  f"{report.remaining} remain ({report.seconds:.2f} s)")
    if args.json:
        json.dump(reports[0].as_json() if args.account else [r.as_json() for r in reports], sys.stdout, indent=2)
        sys.stdout.write("\n")
    remaining = sum(r.remaining for r in reports)
    errors = sum(r.errors for r in reports)
    if remaining:
        hint = "" if args.fix else " (run again with --fix to repair)"
        print(f"boxbox: {remaining} of {errors} errors remain{hint}", file=sys.stderr)
        return ERRORS_REMAIN
    if errors:
        print(f"boxbox: {errors} errors found and fixed", file=sys.stderr)
        return FIXED
    return CLEAN
