"""`boxbox accounts`: create, inspect, limit, rename, enable/disable and delete store accounts.

Works while the server runs: the account database is replaced atomically under a lock and
the server re-reads it on the next login; info edits take the account's info lock, and
deleting an account takes its writer lock (refused while a client is writing).
"""

from __future__ import annotations

import argparse
import json
import sys

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
    p.add_argument("--discset", default=None, help="disc set name (default: the only one, or '0')")
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
    account = parse_account(args.account)
    if action == "create":
        discset = args.discset
        if discset is None:
            discset = next(iter(store.discsets)) if len(store.discsets) == 1 else "0"
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
    return 0
