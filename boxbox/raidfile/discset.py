"""A disc set: three directories holding RAID files (or one, without RAID), and what you do with them.

A raidfile `a/b/name` is the file `a/b/name.rf` in each directory of the set; which
directory holds stripe 1, stripe 2 and parity of a new write rotates with the name, so the
three discs fill and wear evenly (each stripe's header records its role, so a renamed file
keeps working). Temps are `a/b/name.rfw`, see `boxbox.raidfile.claims`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from boxbox.atomic import fsync_dir
from boxbox.errors import ConfigError, InUse, IntegrityError, NotFound, ProgrammingError
from boxbox.raidfile import claims, stats
from boxbox.raidfile.check import StripeReport, check_finals, recover_stale
from boxbox.raidfile.layout import (
    FINAL_SUFFIX,
    MAX_BLOCK_SHIFT,
    MIN_BLOCK_SHIFT,
    RAID_ROLES,
    TEMP_SUFFIX,
    WHOLE,
    Geometry,
)
from boxbox.raidfile.reader import Finals, RaidReader, open_finals
from boxbox.raidfile.writer import RaidWriter, Target, run_parallel

log = logging.getLogger(__name__)


class RebuildSummary(NamedTuple):
    files: int  # raidfiles looked at
    rebuilt: int  # raidfiles that needed and got a repair
    failed: list[str]  # raidfiles that could not be rebuilt (two stripes bad)


def _problem(directories: list[Path], block_size: int) -> tuple[str, str, list[Path]] | None:
    """What is wrong with a disc set definition: (key, message, _) or None; else the directories to use."""
    if not isinstance(block_size, int) or block_size & (block_size - 1) or not (
            1 << MIN_BLOCK_SHIFT <= block_size <= 1 << MAX_BLOCK_SHIFT):
        return "block_size", f"expected a power of two from {1 << MIN_BLOCK_SHIFT} to 16M, got {block_size}", []
    if len(directories) not in (1, 3):
        return "directories", f"expected 1 directory (no RAID) or 3 (RAID), got {len(directories)}", []
    ids = []
    for d in directories:
        try:
            st = os.stat(d)
        except OSError:
            return "directories", f"{d}: no such directory", []
        if not stat.S_ISDIR(st.st_mode):
            return "directories", f"{d}: not a directory", []
        if not os.access(d, os.W_OK | os.X_OK):
            return "directories", f"{d}: not writable", []
        ids.append((st.st_dev, st.st_ino))
    if len(set(ids)) == 1:
        return None  # one directory, or the same one three times: no RAID
    if len(set(ids)) != len(ids):
        return "directories", "expected three distinct directories (or one), got the same directory twice", []
    return None


def _ensure_dir(path: str) -> None:
    """mkdir -p that fsyncs each parent it adds an entry to, so a new file's path survives a crash."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    _ensure_dir(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    fsync_dir(parent)


def _check_relpath(relpath: str, allow_root: bool = False) -> str:
    if allow_root and relpath in ("", "."):
        return ""
    parts = relpath.split("/")
    if not relpath or "\0" in relpath or any(p in ("", ".", "..") for p in parts):
        raise ProgrammingError(f"bad raidfile path {relpath!r}: expected names separated by '/'")
    return relpath


class DiscSet:
    """Named set of directories; creates, reads, checks and repairs the raidfiles in it."""

    def __init__(self, name: str, directories: list[Path], block_size: int = 4096) -> None:
        directories = [Path(d) for d in directories]
        problem = _problem(directories, block_size)
        if problem is not None:
            raise ConfigError(f"discset {name}.{problem[0]}: {problem[1]}")
        self.name = name
        self.block_size = block_size
        distinct = {(os.stat(d).st_dev, os.stat(d).st_ino) for d in directories}
        self.directories = directories if len(distinct) == 3 else directories[:1]
        self.raid = len(self.directories) == 3
        self._roots = [os.fspath(d) for d in self.directories]
        self._made: set[str] = set()  # directories `create` made or found (nothing here removes one)

    @classmethod
    def from_config(cls, name: str, values: dict[str, Any], source: str) -> DiscSet:
        """Build from a parsed `[discset NAME]` section; errors name `source:discset NAME.key`."""
        base = Path(source).absolute().parent  # relative directories are relative to the config file
        dirs = [base / Path(d).expanduser() for d in values["directories"]]
        block_size = values.get("block_size", 4096)
        problem = _problem(dirs, block_size)
        if problem is not None:
            raise ConfigError(f"{source}:discset {name}.{problem[0]}: {problem[1]}")
        return cls(name, dirs, block_size)

    def __repr__(self) -> str:
        return f"DiscSet({self.name!r}, {self._roots!r}, block_size={self.block_size})"

    # names ------------------------------------------------------------------------------

    def _label(self, relpath: str) -> str:
        return f"discset {self.name}: {relpath}"

    def _names(self, relpath: str) -> tuple[list[str], list[str]]:
        _check_relpath(relpath)
        finals = [os.path.join(r, relpath + FINAL_SUFFIX) for r in self._roots]
        return finals, [f[: -len(FINAL_SUFFIX)] + TEMP_SUFFIX for f in finals]

    def _placement(self, relpath: str) -> list[tuple[int, int]]:
        """(role, directory index) for a new write, rotated by the file name."""
        if not self.raid:
            return [(WHOLE, 0)]
        rot = zlib.crc32(relpath.rsplit("/", 1)[-1].encode()) % 3
        return [(role, (rot + role) % 3) for role in RAID_ROLES]

    def _finals(self, relpath: str) -> Finals:
        finals, _ = self._names(relpath)
        return open_finals(finals, self._label(relpath))

    def _recover(self, relpath: str) -> bool:
        finals, temps = self._names(relpath)
        return recover_stale(finals, temps, lambda: open_finals(finals, self._label(relpath)))

    # reading and writing ----------------------------------------------------------------

    def create(self, relpath: str) -> RaidWriter:
        """A writer whose commit() atomically creates or replaces `relpath`."""
        finals, temps = self._names(relpath)
        self._ensure_dirs(temps)
        try:
            fds = claims.claim_all(temps, self._label(relpath))
        except FileNotFoundError:  # a directory removed behind our back: make it again
            self._made.clear()
            self._ensure_dirs(temps)
            fds = claims.claim_all(temps, self._label(relpath))
        try:
            targets = [Target(role, fds[d], temps[d], finals[d]) for role, d in self._placement(relpath)]
            return RaidWriter(self._label(relpath), targets, self.block_size)
        except BaseException:
            for fd, t in zip(fds, temps):
                claims.release(fd, t)
            raise

    def _ensure_dirs(self, paths: list[str]) -> None:
        """`_ensure_dir` of each path's directory, remembered: three stats an object less (a store
        creates thousands of objects in the same few directories)."""
        for p in paths:
            d = os.path.dirname(p)
            if d not in self._made:
                _ensure_dir(d)
                if len(self._made) >= 4096:
                    self._made.clear()
                self._made.add(d)

    def _settled(self, relpath: str) -> Finals:
        """Recover dead writers' temps and open the committed stripes. An unreadable result is
        retried briefly: two commits landing while we open the three files, or a change being
        committed right now, look unreadable for a moment."""
        deadline = time.monotonic() + claims.CLAIM_WAIT
        attempt = 0
        while True:
            live = self._recover(relpath)
            f = self._finals(relpath)
            if f.chosen is not None or (attempt >= 2 and not live) or time.monotonic() > deadline:
                return f
            f.close()
            attempt += 1
            time.sleep(0.002 * attempt)

    def open(self, relpath: str, settle: bool = True) -> RaidReader:
        """Reader of the committed content; NotFound if absent, IntegrityError if unrecoverable.

        With `settle=False`, dead writers' temps are not looked for while every committed stripe
        is there and agrees on one write: they cannot change what is read then (recovery only
        completes a write the stripes disagree about), and the next write of the name, `exists`,
        `check` or `scrub` removes them. That saves three path lookups per read (the store's).
        """
        if not settle:
            f = self._finals(relpath)
            if f.chosen is not None and not any(f.problems):
                return RaidReader(f)
            f.close()
        f = self._settled(relpath)
        if f.chosen is None:
            f.close()
            why = "; ".join(f"directory {i}: {p}" for i, p in enumerate(f.problems) if p)
            raise IntegrityError(f"{self._label(relpath)}: no readable write ({why})")
        return RaidReader(f)

    def exists(self, relpath: str) -> bool:
        self._recover(relpath)
        return any(os.path.lexists(p) for p in self._names(relpath)[0])

    def stamp(self, relpath: str) -> tuple[tuple[int, int, int] | None, ...]:
        """(inode, mtime in ns, size) of each committed stripe, None where missing: changes whenever a
        stripe is written, replaced or removed (so a verification of the file may be remembered by it)."""
        out: list[tuple[int, int, int] | None] = []
        for p in self._names(relpath)[0]:
            try:
                st = os.stat(p)
            except FileNotFoundError:
                out.append(None)
                continue
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def usage_blocks(self, relpath: str) -> int:
        """Blocks of block_size the file takes over all stripes and parity (from its length, so
        a degraded file counts what it will take once repaired)."""
        f = self._finals(relpath)
        try:
            if f.chosen is not None:
                return Geometry(f.chosen.length, f.chosen.block_size).usage_blocks(f.raid, self.block_size)
            return sum(-(-os.fstat(fd).st_size // self.block_size) for fd in f.fds if fd is not None)
        finally:
            f.close()

    def blocks_for_length(self, length: int) -> int:
        """Blocks a file of `length` clear bytes will take, to check a quota before writing."""
        return Geometry(length, self.block_size).usage_blocks(self.raid, self.block_size)

    # changing names ---------------------------------------------------------------------

    def delete(self, relpath: str) -> None:
        """Remove `relpath` atomically: a crash leaves it whole or gone (see `_move_out`)."""
        finals, temps = self._names(relpath)
        if not any(os.path.lexists(p) for p in finals):
            raise NotFound(self._label(relpath))
        for t in temps:
            _ensure_dir(os.path.dirname(t))
        fds = claims.claim_all(temps, self._label(relpath))
        moved: list[tuple[int, int]] = []
        try:
            moved = self._move_out(relpath, finals, temps)
        finally:
            for i, fd in moved:
                claims.release(fd, temps[i])
            for fd, t in zip(fds, temps):
                claims.release(fd, t)

    def _move_out(self, relpath: str, finals: list[str], temps: list[str],
                  locked: dict[int, int] | None = None) -> list[tuple[int, int]]:
        """Rename each committed stripe onto its (claimed) temp name, its inode locked first.

        A crash part way leaves temps of the committed write; recovery renames them back, so
        the file is still whole. Rolled back here on error. Returns (index, locked fd) pairs."""
        moved: list[tuple[int, int]] = []
        try:
            for i, p in enumerate(finals):
                fd = locked.pop(i) if locked and i in locked else self._lock_final(relpath, p)
                if fd is None:
                    continue
                try:
                    os.replace(p, temps[i])
                except BaseException:
                    os.close(fd)
                    raise
                moved.append((i, fd))
            run_parallel(fsync_dir, sorted({os.path.dirname(finals[i]) for i, _ in moved}))
        except BaseException:
            for i, fd in reversed(moved):
                try:
                    os.replace(temps[i], finals[i])
                except OSError:
                    pass  # left on the temp name, unlocked: recovery puts it back on the next open
                finally:
                    os.close(fd)
            raise
        return moved

    def _lock_final(self, relpath: str, path: str) -> int | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        if not claims.lock_fd(fd):
            os.close(fd)
            raise InUse(f"{self._label(relpath)} is being moved by another process")
        return fd

    def rename(self, src: str, dst: str) -> None:
        """Move raidfile `src` to `dst` (replacing it). Each name is atomic: a crash leaves `dst`
        old or new and `src` present or gone, never half; at worst both exist."""
        if src == dst:
            return
        sf, st = self._names(src)
        df, dt = self._names(dst)
        self._recover(src)
        for t in st + dt:
            _ensure_dir(os.path.dirname(t))
        sclaims = claims.claim_all(st, self._label(src))
        try:
            dclaims = claims.claim_all(dt, self._label(dst))
        except BaseException:
            for fd, t in zip(sclaims, st):
                claims.release(fd, t)
            raise
        locked: dict[int, int] = {}
        moved: list[tuple[int, int]] = []
        try:
            f = self._finals(src)
            roles = {i: r for r, i in f.by_role.items()}
            readable = f.chosen is not None
            f.close()
            if not readable:
                raise IntegrityError(f"{self._label(src)}: unreadable, not moved to {dst}")
            for i in range(len(sf)):
                fd = self._lock_final(src, sf[i])
                if fd is not None:
                    locked[i] = fd
                    os.unlink(dt[i])  # our claimed, empty temp; the link below takes its name
                    os.link(sf[i], dt[i])
            order = sorted(locked, key=lambda i: roles.get(i, 9))
            self._replace_in_order(order, dt, df)
            for i in range(len(df)):
                if i not in locked and os.path.lexists(df[i]):
                    os.unlink(df[i])  # an old stripe of dst with no counterpart in src
            run_parallel(fsync_dir, sorted({os.path.dirname(p) for p in df}))
            moved = self._move_out(src, sf, st, locked)
        finally:
            for i, fd in locked.items():  # not moved: unlink our dst temp link if it is still there
                claims.release(fd, dt[i])
            for i, fd in moved:
                claims.release(fd, st[i])
            for fd, t in zip(sclaims + dclaims, st + dt):
                claims.release(fd, t)

    @staticmethod
    def _replace_in_order(order: list[int], temps: list[str], finals: list[str]) -> None:
        """Rename the temps over the finals in `order`; if one fails before the second (the commit
        point), take back a first one that made a new name, so no lone, unreadable stripe is left
        under it (one over an old stripe is stale among two old ones: readers and repair skip it)."""
        new = [not os.path.lexists(finals[i]) for i in order]
        for n, i in enumerate(order):
            try:
                os.replace(temps[i], finals[i])
            except BaseException:
                if n == 1 and new[0]:
                    with contextlib.suppress(OSError):
                        os.unlink(finals[order[0]])
                raise

    # listing ----------------------------------------------------------------------------

    def _entries(self, reldir: str) -> tuple[set[str], set[str], set[str]]:
        """(committed names, names with temps, subdirectories) of `reldir` over all directories."""
        reldir = _check_relpath(reldir, allow_root=True)
        files: set[str] = set()
        temps: set[str] = set()
        dirs: set[str] = set()
        for root in self._roots:
            try:
                with os.scandir(os.path.join(root, reldir)) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False):
                            dirs.add(e.name)
                        elif e.name.endswith(FINAL_SUFFIX):
                            files.add(e.name[: -len(FINAL_SUFFIX)])
                        elif e.name.endswith(TEMP_SUFFIX):
                            temps.add(e.name[: -len(TEMP_SUFFIX)])
            except (FileNotFoundError, NotADirectoryError):
                continue
        return files, temps, dirs

    def listdir(self, reldir: str = "") -> list[str]:
        """Names of the committed raidfiles directly in `reldir` (no temps, no subdirectories)."""
        return sorted(self._entries(reldir)[0])

    def names(self, reldir: str) -> set[str]:
        """Names of the raidfiles directly in `reldir` that are committed or have temps (one listing)."""
        files, temps, _ = self._entries(reldir)
        return files | temps

    def listdirs(self, reldir: str = "") -> list[str]:
        """Names of the subdirectories of `reldir` in any directory of the set."""
        return sorted(self._entries(reldir)[2])

    def _walk(self, reldir: str) -> Iterator[str]:
        """Every raidfile (committed or only temps) under `reldir`, one directory level in memory at a time."""
        files, temps, dirs = self._entries(reldir)
        prefix = f"{reldir}/" if reldir else ""
        for name in sorted(files | temps):
            yield prefix + name
        for d in sorted(dirs):
            yield from self._walk(prefix + d)

    # checking and repair ----------------------------------------------------------------

    def check(self, relpath: str) -> StripeReport:
        """Verify every block of every stripe; NotFound if no stripe exists."""
        f = self._settled(relpath)
        try:
            return check_finals(relpath, f)
        finally:
            f.close()

    def repair(self, relpath: str) -> StripeReport:
        """Rewrite bad, missing or stale stripes from the others (atomically, one stripe at a time).

        Returns the report of what was found (`repaired` set if anything was rewritten);
        IntegrityError if the file cannot be recovered."""
        finals, temps = self._names(relpath)
        self._recover(relpath)
        for t in temps:
            _ensure_dir(os.path.dirname(t))
        fds = claims.claim_all(temps, self._label(relpath))
        used: set[int] = set()
        try:
            f = open_finals(finals, self._label(relpath))
            try:
                report = check_finals(relpath, f)
                if report.ok:
                    return report
                if not report.readable:
                    raise IntegrityError(f"{self._label(relpath)}: cannot repair: {report}")
                h = f.chosen
                assert h is not None  # readable implies a chosen write
                bad = {s.directory for s in report.stripes if s.state != "ok"}
                roles = {i: r for r, i in f.by_role.items()}
                targets = [Target(roles[i], fds[i], temps[i], finals[i]) for i in sorted(bad) if i in roles]
                missing = [r for r in (RAID_ROLES if f.raid else (WHOLE,)) if r not in f.by_role]
                free = [i for i in range(len(finals)) if i not in roles]
                targets += [Target(r, fds[i], temps[i], finals[i]) for r, i in zip(missing, free)]
                used = {finals.index(t.final) for t in targets}
                extra = [(fds[i], temps[i]) for i in range(len(fds)) if i not in used]
                w = RaidWriter(self._label(relpath), targets, h.block_size, h.write_id, extra)
                used = set(range(len(fds)))  # the writer owns every claim now
                with w:
                    reader = RaidReader(f)
                    while True:
                        chunk = reader.read(1 << 20)
                        if not chunk:
                            break
                        w.write(chunk)
                log.warning("%s: repaired %s", self._label(relpath), report)
                stats.bump("repairs")  # metrics hook
                return StripeReport(relpath, report.stripes, report.length, True, repaired=True)
            finally:
                f.close()
        finally:
            for i, fd in enumerate(fds):
                if i not in used:
                    claims.release(fd, temps[i])

    def scrub(self, reldir: str = "", fix: bool = True) -> Iterator[tuple[str, StripeReport]]:
        """Check (and with `fix`, repair) every raidfile under `reldir`; removes temps of dead writers."""
        for relpath in self._walk(reldir):
            try:
                report = self.check(relpath)
            except NotFound:
                continue  # only temps of a write that never committed; recovery removed them
            if fix and not report.ok and report.readable:
                try:
                    report = self.repair(relpath)
                except (InUse, NotFound, IntegrityError) as e:  # busy, gone, or worse than checked
                    log.warning("%s: not repaired: %s", self._label(relpath), e)
            yield relpath, report

    def rebuild_directory(self, index: int) -> RebuildSummary:
        """Refill directory `index` (a replaced, empty disc) with the stripes it should hold."""
        if not self.raid or not 0 <= index < 3:
            raise ProgrammingError(f"discset {self.name}: no directory {index} to rebuild")
        os.makedirs(self._roots[index], mode=0o700, exist_ok=True)
        files = rebuilt = 0
        failed: list[str] = []
        for relpath, report in self.scrub(""):
            files += 1
            if report.repaired:
                rebuilt += 1
            elif not report.ok:
                failed.append(relpath)
        return RebuildSummary(files, rebuilt, failed)
