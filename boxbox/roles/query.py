"""`boxbox query`: browse the store, get files and old versions, restore, compare (bbackupquery).

One command: `boxbox query --config FILE COMMAND ARGS...` runs it and exits with its status.
No command: an interactive shell (readline history, completion of commands and remote names)
when stdin is a terminal, otherwise commands are read line by line. Lines are split with
`shlex`; a name that is not printable UTF-8 is shown and typed with `\\xNN` escapes (and a
backslash as `\\\\`), inside quotes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, TextIO

from boxbox.errors import BoxboxError, NotFound, PermissionDenied, UsageError
from boxbox.restore.names import parse_name, show_name

PROMPT = "boxbox:{}> "
HISTORY_FILE = ".boxbox_query_history"
HISTORY_LENGTH = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="/etc/boxbox/client.conf", help="the client's config file")
    parser.add_argument("-w", "--write", action="store_true",
                        help="log in for writing (needed by delete and undelete); read-only otherwise")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress line and no summaries")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="a command and its arguments (`help` lists them); none: interactive shell")


# ---------------------------------------------------------------- names and times
def parse_time(text: str) -> int:
    """`2026-11-20 14:00[:SS]` (local time), an ISO time with offset, or `@SECONDS` -> ns since the epoch."""
    text = text.strip()
    if text.startswith("@"):
        try:
            return int(Decimal(text[1:]) * 1_000_000_000)
        except InvalidOperation:
            raise UsageError(f"cannot read the time {text!r}: expected @SECONDS since the epoch") from None
    try:
        dt = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"cannot read the time {text!r}", hint='write it as "2026-11-20 14:00" (local time), '
                                                               "an ISO time with an offset, or @SECONDS") from None
    whole = int(dt.replace(microsecond=0).timestamp())
    return whole * 1_000_000_000 + dt.microsecond * 1000


def show_time(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------- command parsing
class _ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}", hint=f"help {self.prog.split()[-1]}")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise UsageError(message or f"{self.prog}: bad arguments")


def _parser(name: str, description: str) -> _ArgParser:
    return _ArgParser(prog=name, description=description, add_help=False)


def _build_parsers() -> dict[str, _ArgParser]:
    p: dict[str, _ArgParser] = {}
    ls = p["ls"] = _parser("ls", "list a remote directory")
    ls.add_argument("-l", "--long", action="store_true", help="object id, flags, size, time and name")
    ls.add_argument("-R", "--recursive", action="store_true", help="list subdirectories too")
    ls.add_argument("-o", "--old", action="store_true", help="include old versions")
    ls.add_argument("-d", "--deleted", action="store_true", help="include deleted entries")
    ls.add_argument("-i", "--ids", action="store_true", help="show object ids")
    ls.add_argument("-s", "--sizes", action="store_true", help="show sizes in 4 KiB store blocks")
    ls.add_argument("-t", "--times", action="store_true", help="show modification times")
    ls.add_argument("--at", metavar="TIME", help="as the tree was at TIME (see `help restore`)")
    ls.add_argument("path", nargs="?", default=".")
    cd = p["cd"] = _parser("cd", "change the remote directory")
    cd.add_argument("-d", "--deleted", action="store_true", help="a deleted directory may be entered")
    cd.add_argument("path", nargs="?", default="/")
    p["pwd"] = _parser("pwd", "show the remote directory")
    lcd = p["lcd"] = _parser("lcd", "change the local directory")
    lcd.add_argument("path")
    get = p["get"] = _parser("get", "download one file: `get NAME [LOCAL]`, or any version: `get -i ID LOCAL`")
    get.add_argument("-i", "--id", metavar="ID", help="object id (hex, from `ls -l -o -d`): any version, even deleted")
    get.add_argument("name", help="remote file (with -i: the local file name)")
    get.add_argument("local", nargs="?")
    rs = p["restore"] = _parser("restore", "restore a remote directory tree into a new local directory")
    rs.add_argument("-d", "--deleted", action="store_true", help="also restore deleted files and directories")
    rs.add_argument("--resume", action="store_true", help="continue an interrupted restore into LOCAL_DIR")
    rs.add_argument("--continue-on-error", action="store_true", help="report damaged items and restore the rest")
    rs.add_argument("--at", metavar="TIME",
                    help='the tree as it was at TIME: "2026-11-20 14:00" (local), ISO with offset, or @SECONDS')
    rs.add_argument("remote_dir")
    rs.add_argument("local_dir")
    cmp_ = p["compare"] = _parser("compare", "compare remote and local trees; exit 0 same, 1 different, 2 error")
    which = cmp_.add_mutually_exclusive_group()
    which.add_argument("-a", "--all", action="store_true", help="every location in the config")
    which.add_argument("-l", "--location", metavar="LOCATION", help="one location from the config")
    cmp_.add_argument("-q", "--quick", action="store_true",
                      help="check local files against the stored block checksums (no file data downloaded)")
    cmp_.add_argument("paths", nargs="*", metavar="REMOTE LOCAL")
    us = p["usage"] = _parser("usage", "space used on the store")
    us.add_argument("--json", action="store_true")
    und = p["undelete"] = _parser("undelete", "undelete a file or directory (needs -w)")
    und.add_argument("name")
    de = p["delete"] = _parser("delete", "mark a file or directory deleted (needs -w)")
    de.add_argument("name")
    ve = p["versions"] = _parser("versions", "every stored version of a file, with time and size")
    ve.add_argument("name")
    he = p["help"] = _parser("help", "list the commands, or explain one")
    he.add_argument("command", nargs="?")
    p["quit"] = _parser("quit", "leave the shell")
    return p


# ---------------------------------------------------------------- the shell
class Shell:
    """The commands, shared by one-shot and interactive use. Each returns an exit status."""

    def __init__(self, remote: Any, cfg: Any, *, write: bool, quiet: bool, out: TextIO, err: TextIO) -> None:
        self.remote = remote
        self.cfg = cfg
        self.write = write
        self.quiet = quiet
        self.out = out
        self.err = err
        self.cwd: list[tuple[bytes, int]] = [(b"", 1)]
        self.parsers = _build_parsers()
        self.commands: dict[str, Callable[[argparse.Namespace], int]] = {
            "ls": self.do_ls, "cd": self.do_cd, "pwd": self.do_pwd, "lcd": self.do_lcd, "get": self.do_get,
            "restore": self.do_restore, "compare": self.do_compare, "usage": self.do_usage,
            "undelete": self.do_undelete, "delete": self.do_delete, "versions": self.do_versions,
            "help": self.do_help, "quit": self.do_quit}
        self.done = False
        self._completion: list[str] = []

    # ------------------------------------------------------------ running
    def run(self, words: list[str]) -> int:
        """Run one command (already split); a BoxboxError is printed and becomes the status."""
        if not words:
            return 0
        name = {"exit": "quit", "list": "ls", "dir": "ls"}.get(words[0], words[0])
        handler = self.commands.get(name)
        try:
            if handler is None:
                raise UsageError(f"unknown command {words[0]!r}", hint="`help` lists the commands")
            return handler(self.parsers[name].parse_args(words[1:]))
        except BoxboxError as e:
            self.err.write(f"boxbox: {e}\n")
            if e.hint:
                self.err.write(f"hint: {e.hint}\n")
            return e.exit_code

    def run_line(self, line: str) -> int:
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            self.err.write(f"boxbox: cannot split the line: {e}\n")
            return 2
        return self.run(words)

    def prompt(self) -> str:
        return PROMPT.format(self.remote.path_of(self.cwd))

    def progress(self, verb: str) -> Any:
        from boxbox.restore.progress import Progress

        return Progress(self.err if not self.quiet and self.err.isatty() else None, verb)

    def say(self, text: str) -> None:
        if not self.quiet:
            self.out.write(text + "\n")

    # ------------------------------------------------------------ helpers
    def _dir(self, path: str, at_ns: int | None = None, deleted: bool = False) -> list[tuple[bytes, int]]:
        return self.remote.resolve(parse_name(path), self.cwd, at_ns=at_ns, deleted=deleted)

    def _split(self, path: str) -> tuple[list[tuple[bytes, int]], bytes]:
        """`dir/name` -> (chain of dir, name)."""
        raw = parse_name(path)
        head, _, tail = raw.rpartition(b"/")
        if not tail:
            raise UsageError(f"{path!r}: expected a name, not a directory")
        chain = self.remote.resolve(head or (b"/" if raw.startswith(b"/") else b"."), self.cwd)
        return chain, tail

    def _require_write(self, what: str) -> None:
        if not self.write:
            raise PermissionDenied(f"{what} changes the store; this session is read-only",
                                   hint="run boxbox query with -w")

    # ------------------------------------------------------------ commands
    def do_ls(self, a: argparse.Namespace) -> int:
        from boxbox.restore.remote import flag_string, select

        at = parse_time(a.at) if a.at else None
        chain = self._dir(a.path, at_ns=at, deleted=a.deleted)
        long = a.long
        stack = [(chain, b"")]
        status = 0
        while stack:
            here, prefix = stack.pop(0)
            listing = self.remote.list(here[-1][1], here[-1][0])
            for problem in listing.errors:
                self.err.write(f"boxbox: {problem}\n")
                status = 1
            for e in select(listing, at_ns=at, deleted=a.deleted, old=a.old):
                name = prefix + e.name
                cols = []
                if long or a.ids:
                    cols.append(f"{e.object_id:08x}")
                if long:
                    cols.append(flag_string(e.flags))
                if long or a.sizes:
                    cols.append(f"{e.size_blocks:>8}")
                if long or a.times:
                    cols.append(show_time(e.mtime_ns))
                cols.append(show_name(name) + ("/" if e.is_dir else ""))
                self.out.write(" ".join(cols) + "\n")
                if a.recursive and e.is_dir and not e.old:
                    stack.append((here + [(e.name, e.object_id)], name + b"/"))
        return status

    def do_cd(self, a: argparse.Namespace) -> int:
        self.cwd = self._dir(a.path, deleted=a.deleted)
        return 0

    def do_pwd(self, a: argparse.Namespace) -> int:
        self.out.write(self.remote.path_of(self.cwd) + "\n")
        return 0

    def do_lcd(self, a: argparse.Namespace) -> int:
        try:
            os.chdir(a.path)
        except OSError as e:
            raise UsageError(f"lcd {a.path}: {e.strerror}") from None
        self.say(f"local directory is now {os.getcwd()}")
        return 0

    def do_get(self, a: argparse.Namespace) -> int:
        from boxbox.restore.restore import get_file

        if a.id is not None:
            if a.local is not None:
                raise UsageError("get -i ID LOCAL: one local file name, no remote name")
            try:
                object_id = int(a.id, 16)
            except ValueError:
                raise UsageError(f"get -i: {a.id!r} is not a hex object id") from None
            chain, local = self.cwd, a.name
            listing = self.remote.list(chain[-1][1], chain[-1][0])
            entry = next((e for e in listing.entries if e.object_id == object_id and e.is_file), None)
            if entry is None:
                raise NotFound(f"file object {object_id:#x} in {self.remote.path_of(chain)}",
                               hint="`ls -l -o -d` shows the ids of every version")
            chain_dir = chain[-1][1]
            source = show_name(entry.name)
        else:
            chain, name = self._split(a.name)
            entry = self.remote.lookup(chain[-1][1], name, want_dir=False)
            chain_dir = chain[-1][1]
            local = a.local if a.local is not None else os.fsdecode(name)
            source = a.name
        size = get_file(self.remote, chain_dir, entry, local)
        self.say(f"got {source} ({size} bytes) as {local}")
        return 0

    def do_restore(self, a: argparse.Namespace) -> int:
        from boxbox.restore.restore import Options, restore

        at = parse_time(a.at) if a.at else None
        chain = self._dir(a.remote_dir, at_ns=at, deleted=a.deleted)
        options = Options(deleted=a.deleted, resume=a.resume, continue_on_error=a.continue_on_error, at_ns=at)
        summary = restore(self.remote, chain, a.local_dir, options, self.progress("restored"))
        for w in summary.warnings:
            self.err.write(f"boxbox: warning: {w}\n")
        for problem in summary.errors:
            self.err.write(f"boxbox: {problem}\n")
        self.say(summary.line())
        return 1 if summary.errors else 0

    def do_compare(self, a: argparse.Namespace) -> int:
        from boxbox.restore.compare import compare

        pairs: list[tuple[str, str]] = []
        locations = self.cfg.groups.get("location", {}) if self.cfg is not None else {}
        if a.all or a.location:
            if a.paths:
                raise UsageError("compare: give -a, -l LOCATION, or REMOTE LOCAL, not several")
            if a.location and a.location not in locations:
                raise UsageError(f"compare: no location {a.location!r} in the config",
                                 hint=f"locations: {', '.join(locations) or 'none'}")
            names = sorted(locations) if a.all else [a.location]
            pairs = [("/" + n, str(locations[n]["path"])) for n in names]
        elif len(a.paths) == 2:
            pairs = [(a.paths[0], a.paths[1])]
        else:
            raise UsageError("compare: give -a, -l LOCATION, or REMOTE LOCAL")
        worst = 0
        for remote_path, local in pairs:
            try:
                chain = self._dir(remote_path)
            except NotFound as e:
                self.err.write(f"boxbox: {e}\n")
                worst = 2
                continue
            result = compare(self.remote, chain, local, quick=a.quick, progress=self.progress("compared"))
            for d in result.differences:
                self.out.write(f"differs: {d}\n")
            for problem in result.errors:
                self.err.write(f"boxbox: {problem}\n")
            self.say(f"{remote_path} vs {local}: {result.line()}")
            if result.differences:
                self.err.write(f"boxbox: {remote_path} and {local} differ ({len(result.differences)} differences)\n")
            worst = max(worst, result.exit_code)
        return worst

    def do_usage(self, a: argparse.Namespace) -> int:
        u = self.remote.usage()
        fields = {"blocks_used": u.blocks_used, "blocks_current": u.blocks_current, "blocks_old": u.blocks_old,
                  "blocks_deleted": u.blocks_deleted, "blocks_directories": u.blocks_directories,
                  "blocks_soft_limit": u.blocks_soft_limit, "blocks_hard_limit": u.blocks_hard_limit,
                  "block_size": u.block_size, "name": u.name}
        if a.json:
            self.out.write(json.dumps(fields, sort_keys=True) + "\n")
            return 0
        from boxbox.restore.progress import human_bytes

        def row(label: str, blocks: int) -> str:
            pct = f"{100 * blocks / u.blocks_hard_limit:5.1f}%" if u.blocks_hard_limit else "     -"
            return f"{label:<18}{blocks:>12} blocks {human_bytes(blocks * u.block_size):>10} {pct}"

        for label, key in (("used", "blocks_used"), ("current files", "blocks_current"),
                           ("old versions", "blocks_old"), ("deleted files", "blocks_deleted"),
                           ("directories", "blocks_directories"), ("soft limit", "blocks_soft_limit"),
                           ("hard limit", "blocks_hard_limit")):
            self.out.write(row(label, fields[key]) + "\n")
        return 0

    def do_delete(self, a: argparse.Namespace) -> int:
        from boxbox.crypto.seal import seal_entry_name

        self._require_write("delete")
        chain, name = self._split(a.name)
        entry = self.remote.lookup(chain[-1][1], name)
        if entry.is_dir:
            self.remote.client.delete_directory(entry.object_id)
        else:
            self.remote.client.delete_file(chain[-1][1], seal_entry_name(self.remote.keys, chain[-1][1], name))
        self.say(f"deleted {a.name}")
        return 0

    def do_undelete(self, a: argparse.Namespace) -> int:
        from boxbox.restore.remote import versions_of

        self._require_write("undelete")
        chain, name = self._split(a.name)
        listing = self.remote.list(chain[-1][1], chain[-1][0])
        gone = [e for e in versions_of(listing, name) if e.deleted]
        if not gone:
            raise NotFound(f"no deleted entry {a.name!r} in {self.remote.path_of(chain)}")
        entry = gone[0]
        if entry.is_dir:
            self.remote.client.undelete_directory(entry.object_id)
        else:
            self.remote.client.undelete_file(chain[-1][1], entry.object_id)
        self.say(f"undeleted {a.name}")
        return 0

    def do_versions(self, a: argparse.Namespace) -> int:
        from boxbox.objects.file import open_index
        from boxbox.restore.remote import flag_string, versions_of
        from boxbox.wire import messages as m

        chain, name = self._split(a.name)
        dir_id = chain[-1][1]
        listing = self.remote.list(dir_id, chain[-1][0])
        found = [e for e in versions_of(listing, name) if e.is_file]
        if not found:
            raise NotFound(f"no version of {a.name!r} in {self.remote.path_of(chain)}")
        # exact sizes are sealed in each version's block index: fetch them all in one round trip
        pending = [self.remote.client.submit(m.GetBlockIndexByID(e.object_id), download=True) for e in found]
        status = 0
        for e, p in zip(found, pending):
            try:
                blob = p.result()[1].read()
                size = str(open_index(self.remote.keys, blob, show_name(e.name), container_id=dir_id,
                                      name=e.name).size)
            except BoxboxError as err:
                self.err.write(f"boxbox: version {e.object_id:08x}: {err}\n")
                size, status = "?", 1
            self.out.write(f"{e.object_id:08x} {flag_string(e.flags)} {show_time(e.mtime_ns)} {size:>12} "
                           f"{show_name(e.name)}\n")
        return status

    def do_help(self, a: argparse.Namespace) -> int:
        if a.command:
            parser = self.parsers.get(a.command)
            if parser is None:
                raise UsageError(f"no command {a.command!r}", hint="`help` lists the commands")
            self.out.write(parser.format_help())
            return 0
        for name, parser in self.parsers.items():
            self.out.write(f"{name:<10} {parser.description}\n")
        self.out.write("Quote names with spaces; odd bytes are written \\xNN inside quotes.\n")
        return 0

    def do_quit(self, a: argparse.Namespace) -> int:
        self.done = True
        return 0

    # ------------------------------------------------------------ interactive
    def complete(self, text: str, state: int) -> str | None:
        """readline completer: commands first on the line, remote names after."""
        if state == 0:
            import readline

            line = readline.get_line_buffer()
            if not line[:readline.get_begidx()].strip():
                self._completion = [c + " " for c in self.commands if c.startswith(text)]
            else:
                self._completion = self._complete_remote(text)
        return self._completion[state] if state < len(self._completion) else None

    def _complete_remote(self, text: str) -> list[str]:
        """Names in the directory `text` points into (the part before its last `/`)."""
        head, slash, stem = text.rpartition("/")
        try:
            chain = self._dir(head or "/") if slash else self.cwd
            listing = self.remote.list(chain[-1][1], chain[-1][0])
        except BoxboxError:
            return []
        prefix = head + slash
        names = sorted({show_name(e.name) + ("/" if e.is_dir else "") for e in listing.entries
                        if not e.old and not e.deleted})
        return [prefix + n for n in names if n.startswith(stem)]

    def interactive(self, stdin: TextIO) -> int:
        """A readline shell on a terminal; otherwise one command per line. Returns the last failure."""
        status = 0
        if stdin.isatty():
            import readline

            history = Path.home() / HISTORY_FILE
            try:
                readline.read_history_file(history)
            except OSError:
                pass
            readline.set_history_length(HISTORY_LENGTH)
            readline.set_completer_delims(" \t\n")
            readline.set_completer(self.complete)
            readline.parse_and_bind("tab: complete")
            try:
                while not self.done:
                    try:
                        line = input(self.prompt())
                    except EOFError:
                        self.out.write("\n")
                        break
                    except KeyboardInterrupt:
                        self.out.write("\n")
                        continue
                    code = self.run_line(line)
                    status = code or status
            finally:
                try:
                    readline.write_history_file(history)
                except OSError:
                    pass
            return status
        for line in stdin:
            code = self.run_line(line)
            status = code or status
            if self.done:
                break
        return status


def connect(cfg: Any, write: bool) -> Any:
    """Log in to the store named in the client config; read-only unless `write`."""
    from boxbox.crypto.keys import load_keys
    from boxbox.restore.remote import Remote
    from boxbox.wire import tls
    from boxbox.wire.client import Client

    c = cfg["client"]
    keys = load_keys(c["keys_file"])
    context = tls.client_context(c["certificate"], c["private_key"], c["ca_certificate"])
    client = Client.connect_any(c["server"], c["port"], context)
    try:
        client.login(read_only=not write)
    except BaseException:
        client.close()
        raise
    return Remote(client, keys)


def main(args: argparse.Namespace) -> int:
    from boxbox import config

    cfg = config.load(args.config, "client")
    remote = connect(cfg, args.write)
    shell = Shell(remote, cfg, write=args.write, quiet=args.quiet, out=sys.stdout, err=sys.stderr)
    try:
        if args.command:
            return shell.run(args.command)
        return shell.interactive(sys.stdin)
    finally:
        try:
            remote.client.finish()
        except BoxboxError:
            remote.client.close()
