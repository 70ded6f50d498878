"""`boxbox quickstart [DIR ...] [--home PATH]`: from nothing to a first backup on this machine.

It makes a CA, a server certificate for 127.0.0.1/localhost, a RAID disc set, an account
sized from the free space, a client certificate, a keys file and both configs under the
home (`~/.boxbox`); starts the store server in the background on a free local port; runs a
snapshot backup of each DIR (default: the current directory); and prints what was backed
up and the exact commands to browse, restore, back up again and stop the server. Run again,
it reuses everything, restarts the server if it is not running, and backs up again.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from boxbox.errors import BoxboxError
from boxbox.quickstart import home as qs
from boxbox.quickstart import launch

if TYPE_CHECKING:
    from boxbox.backup.run import BackupRun, RunResult

#: how often the progress line is redrawn
REDRAW = 0.25
#: read errors listed after a run (the rest are counted)
SHOW_ERRORS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", metavar="DIR", nargs="*",
                        help="directories to back up (first run default: the current directory; "
                             "later runs back up the configured ones and add any DIR given)")
    parser.add_argument("--home", default="~/.boxbox",
                        help="where the CA, keys file, store, configs and server log live (default ~/.boxbox)")


def main(args: argparse.Namespace) -> int:
    home = qs.make_home(Path(args.home))
    command = launch.invocation()
    as_root = os.geteuid() == 0
    existing = qs.configured_locations(home)
    dirs = qs.check_directories(home, [Path(d) for d in args.dirs] or ([] if existing else [Path.cwd()]))

    print(f"boxbox quickstart: everything lives in {home.root}")
    _report(qs.ensure_ca(home))
    _report(qs.ensure_server_certificate(home))
    _report(qs.ensure_client_certificate(home))
    _report(qs.ensure_keys(home))
    _report(qs.ensure_discs(home))
    port, moved = _choose_port(home)
    _report(qs.ensure_server_config(home, port))
    step, sizing = qs.ensure_account(home)
    _report(step)
    for line in sizing.splitlines():
        print(f"        {line}")
    step, locations = qs.ensure_client_config(home, port, dirs)
    _report(step)
    if moved:
        print(f"        the old port was taken by another program: both configs now say port {port}")
    pid = _ensure_server(home, command, port, as_root)

    print(f"backing up {', '.join(str(p) for p in locations.values())}")
    result = _backup(home.client_conf, sys.stderr if sys.stderr.isatty() else None)
    if not result.ok:
        raise BoxboxError(f"the backup failed: {result.error}",
                          hint=f"the store server's log: {home.server_log}; run quickstart again to retry, "
                               f"or stop the server (pid {pid}): kill \"$(cat {launch.show([str(home.pid_file)])})\"")
    _summary(home, result)
    _next_steps(home, command, locations, pid)
    print()
    print(keys_box(home.keys_file))
    return 0


def _report(step: qs.Step) -> None:
    print(f"  {'made' if step.new else 'kept'}  {step.what:<19} {step.detail}")


def _choose_port(home: qs.Home) -> tuple[int, bool]:
    """The configured port (moved to a free one if another program took it), or a free one for a new home."""
    from boxbox import config

    if not home.server_conf.exists():
        return launch.free_port(), False
    port = config.load(home.server_conf, "server")["server"]["port"]
    if launch.running_server(home.pid_file, home.server_conf) is not None or launch.port_is_free(port):
        return port, False
    port = launch.free_port()
    for path in (home.server_conf, home.client_conf):
        if path.exists():
            qs.set_port(path, port)
    return port, True


def _ensure_server(home: qs.Home, command: list[str], port: int, as_root: bool) -> int:
    """The store server's pid: the running one, or one started now and answering TLS."""
    from boxbox.ca import authority
    from boxbox.wire import tls

    context = tls.client_context(home.client_dir / authority.CLIENT_CERT, home.client_dir / authority.CLIENT_KEY,
                                 home.ca_dir / authority.CA_CERT)
    pid = launch.running_server(home.pid_file, home.server_conf)
    if pid is not None:
        if not launch.accepts_tls(port, context):
            raise BoxboxError(f"the store server (pid {pid}) runs but does not answer TLS on 127.0.0.1 port {port}",
                              hint=f"stop it with `kill {pid}` and run quickstart again; its log: {home.server_log}")
        print(f"  kept  {'store server':<19} pid {pid}, 127.0.0.1 port {port}, log {home.server_log}")
        return pid
    if as_root:
        print("        running as root: the store server, which refuses root, is started with --allow-root\n"
              "        (a real store server runs as its own user: see docs/PACKAGING.md)")
    pid = launch.start_server(command, home.server_conf, home.server_log, context, port, allow_root=as_root)
    print(f"  made  {'store server':<19} pid {pid}, 127.0.0.1 port {port}, log {home.server_log}")
    return pid


class _ProgressLine:
    """A line on the terminal redrawn from the run's counters while it works (from a thread)."""

    def __init__(self, stream: TextIO | None, run: BackupRun) -> None:
        self.stream = stream
        self.run = run
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="progress")
        self._width = 0

    def __enter__(self) -> _ProgressLine:
        if self.stream is not None:
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.stream is None:
            return
        self._stop.set()
        self._thread.join()
        self.stream.write("\r" + " " * self._width + "\r")
        self.stream.flush()

    def _loop(self) -> None:
        stream = self.stream
        if stream is None:
            return
        while not self._stop.wait(REDRAW):
            session = self.run.session
            elapsed = time.monotonic() - self.started
            if session is None:
                line = progress_line(None, 0, 0, elapsed)
            else:
                line = progress_line(session.stats.files_uploaded, session.stats.file_bytes, session.bytes_sent,
                                     elapsed)
            stream.write("\r" + line.ljust(self._width))
            stream.flush()
            self._width = len(line)


def progress_line(files: int | None, file_bytes: int, sent: int, elapsed: float) -> str:
    """`files` is None while the scan has found nothing to send yet (no connection made)."""
    from boxbox.restore.progress import human_bytes, human_seconds

    if files is None:
        return f"looking for changes... {human_seconds(elapsed)}"
    return (f"backing up: {files} files, {human_bytes(file_bytes)} read, {human_bytes(sent)} sent, "
            f"{human_seconds(elapsed)}")


def _backup(client_conf: Path, stream: TextIO | None) -> RunResult:
    """One snapshot run, as `boxbox client --once` does, with a progress line on STREAM."""
    from boxbox.backup import state as state_mod
    from boxbox.backup.daemon import Daemon
    from boxbox.backup.run import BackupRun

    daemon = Daemon(client_conf)  # loads and checks the config, keys, data directory and client id
    state = state_mod.load_or_rebuild(daemon.state_path, daemon.account)
    run = BackupRun(daemon.cfg, daemon.keys, state, cid=daemon.cid, force=True)
    with _ProgressLine(stream, run):
        return run.run()


def _summary(home: qs.Home, result: RunResult) -> None:
    from boxbox import config
    from boxbox.restore.progress import human_bytes, human_seconds
    from boxbox.store.account import Store

    s = result.stats
    seconds = result.finished - result.started
    took = f"{seconds:.1f} s" if seconds < 60 else human_seconds(seconds)
    if not result.connected:
        print(f"nothing changed since the last backup: nothing sent ({took})")
    else:
        extra = [text for n, text in ((s.diffs, f"{s.diffs} as diffs"),
                                      (s.directories_created, _count(s.directories_created, "new directory")),
                                      (s.moved, f"{s.moved} moved"), (s.deleted, f"{s.deleted} deleted"),
                                      (s.attributes_changed, f"{s.attributes_changed} with new attributes only"))
                 if n]
        done = (f"backed up {_count(s.files_uploaded, 'file')} ({human_bytes(s.file_bytes)})" if s.files_uploaded
                else "no file needed uploading")
        print(f"{done} in {took}; {human_bytes(result.bytes_sent)} sent{'; ' + ', '.join(extra) if extra else ''}")
    for text in s.read_errors[:SHOW_ERRORS]:
        print(f"boxbox: warning: not readable: {text}", file=sys.stderr)
    if len(s.read_errors) > SHOW_ERRORS:
        print(f"boxbox: warning: {len(s.read_errors) - SHOW_ERRORS} more not readable", file=sys.stderr)
    info = Store.from_config(config.load(home.server_conf, "server")).read_info(qs.ACCOUNT)
    print(f"the store holds {_count(info.count_current, 'file')} in {_count(info.count_directories, 'directory')} "
          f"({_count(info.count_old, 'old version')}) and uses {human_bytes(info.blocks_used * qs.BLOCK_SIZE)} of "
          f"{human_bytes(info.hard_limit * qs.BLOCK_SIZE)}")


def _count(n: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n} {noun if n == 1 else plural}"


def _next_steps(home: qs.Home, command: list[str], locations: dict[str, Path], pid: int) -> None:
    show = launch.show
    query = [*command, "query", "--config", str(home.client_conf)]
    print()
    print("What next:")
    print("  browse the backup (a shell: ls, cd, get, versions, restore; `help` lists them):")
    print(f"    {show(query)}")
    first = next(iter(locations))
    print("  list a location without the shell:")
    print(f"    {show([*query, 'ls', '-l', first])}")
    print("  restore into a new directory (here):")
    for name in locations:
        print(f"    {show([*query, 'restore', name, f'restored-{name}'])}")
    print("  back up again (or run this quickstart again):")
    print(f"    {show([*command, 'client', '--config', str(home.client_conf), '--once'])}")
    print(f"  stop the store server (pid {pid}; quickstart starts it again):")
    print(f"    kill \"$(cat {show([str(home.pid_file)])})\"")


def keys_box(keys_file: Path) -> str:
    """The reminder about the keys file, in a box that a person does not scroll past."""
    lines = [
        "COPY THE KEYS FILE SOMEWHERE SAFE, OFF THIS MACHINE:",
        f"    {keys_file}",
        "Every backup is encrypted with it: without it nothing can be restored,",
        "by you or by anyone. If this machine's disc dies and the keys file was",
        "only here, the backups die with it. It is 1 KiB: keep a copy on a USB",
        "stick or in a password manager (base64), and keep it secret.",
    ]
    width = max(len(ln) for ln in lines)
    rule = "+" + "-" * (width + 4) + "+"
    return "\n".join([rule, *(f"|  {ln.ljust(width)}  |" for ln in lines), rule])
