"""One backup run over every location: scan, connect on the first change, sync, save the state.

Nothing changed anywhere -> no connection at all. The state is written (atomically) only
after a run that reached its end; a run that fails or is stopped midway leaves the last
state in place, which is still consistent: directories the run touched were not recorded
as in sync, so the next run compares them with the store again.

The client store marker (`(client id << 32) | run counter`, set at the end of each run that
connected) tells whether the store changed behind our back: our own marker but another
counter means our state is stale (a crash between setting it and saving) -> forget the
store ids and rebuild from the store; another client's marker -> `InUse`, the daemon
pauses until `ctl force-sync` takes the account over.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from boxbox.backup import state as state_mod
from boxbox.backup.outcome import RunStats, Settings, Stopped
from boxbox.backup.rules import Rules
from boxbox.backup.scan import Scanner
from boxbox.atomic import write_atomic
from boxbox.config import Config
from boxbox.errors import BoxboxError, InUse

if TYPE_CHECKING:  # the upload stack is imported on the first change (nothing changed: never)
    from boxbox.backup.uploader import StoreSession
    from boxbox.crypto.keys import Keys
    from boxbox.wire.client import Client

log = logging.getLogger(__name__)


class _Rebuild(Exception):
    """The store does not match the state: forget the store ids and scan again (internal)."""


class RunResult:
    """What `boxbox ctl status` shows about a run."""

    __slots__ = ("ok", "error", "connected", "store_full", "marker_conflict", "started", "finished", "bytes_sent",
                 "stats", "store_usage")

    def __init__(self, *, error: str = "", started: float = 0.0, finished: float = 0.0) -> None:
        self.ok = False
        self.error = error
        self.connected = False
        self.store_full = False
        #: another client's store marker: the daemon pauses
        self.marker_conflict = False
        self.started = started
        self.finished = finished
        self.bytes_sent = 0
        self.stats = RunStats()
        #: what the store said at login, bytes: used, soft_limit, hard_limit (None if it did not log in)
        self.store_usage: dict[str, int] | None = None

    def to_json(self) -> dict[str, object]:
        s = self.stats
        return {"ok": self.ok, "error": self.error, "connected": self.connected, "store_full": self.store_full,
                "started": self.started, "finished": self.finished, "bytes_sent": self.bytes_sent,
                "files_uploaded": s.files_uploaded, "diffs": s.diffs, "file_bytes": s.file_bytes,
                "new_bytes": s.new_bytes, "attributes_changed": s.attributes_changed,
                "directories_created": s.directories_created, "moved": s.moved, "deleted": s.deleted,
                "waiting": s.waiting, "read_errors": s.read_errors[-20:], "upload_errors": s.upload_errors[-20:],
                "store_usage": self.store_usage}


def settings_from(cfg: Config) -> Settings:
    c = cfg["client"]
    return Settings(cipher=c["cipher"], lazy=c["automatic_backup"], minimum_file_age=c["minimum_file_age"],
                    max_upload_wait=c["max_upload_wait"], max_file_time_in_future=c["max_file_time_in_future"],
                    file_tracking_size_threshold=c["file_tracking_size_threshold"],
                    diffing_upload_size_threshold=c["diffing_upload_size_threshold"],
                    maximum_diffing_time=c["maximum_diffing_time"], keep_alive_time=c["keep_alive_time"],
                    max_upload_rate=c["max_upload_rate"])


def client_id(data_directory: Path) -> int:
    """This client's 32-bit identity, kept beside the state (made on first use)."""
    path = data_directory / "client-id"
    try:
        value = int(path.read_text().strip(), 16)
        if 0 < value < 1 << 32:
            return value
    except (OSError, ValueError):
        pass
    value = int.from_bytes(os.urandom(4), "little") or 1
    write_atomic(path, f"{value:08x}\n".encode(), mode=0o600)
    return value


def connect(cfg: Config, timeout: float = 300.0) -> Client:
    """TLS session with the configured server (not logged in yet)."""
    from boxbox.wire import tls
    from boxbox.wire.client import Client

    c = cfg["client"]
    ctx = tls.client_context(c["certificate"], c["private_key"], c["ca_certificate"])
    return Client.connect_any(c["server"], c["port"], ctx, timeout=timeout)


class BackupRun:
    """One run. `run()` returns a RunResult and never raises BoxboxError (it goes into the result)."""

    def __init__(self, cfg: Config, keys: Keys | Callable[[], Keys], state: state_mod.ClientState, *, cid: int,
                 force: bool = False, take_over: bool = False, should_stop: Callable[[], bool] = lambda: False,
                 connector: Callable[[], Client] | None = None) -> None:
        self.cfg = cfg
        self._keys = keys
        self.state = state
        self.cid = cid
        self.force = force
        self.take_over = take_over
        self.should_stop = should_stop
        self.connector = connector or (lambda: connect(cfg))
        self.settings = settings_from(cfg)
        self.session: StoreSession | None = None
        self.result = RunResult()
        self._rebuild = False

    @property
    def keys(self) -> Keys:
        """The keys; given as a loader, loaded on the first change (nothing changed: never)."""
        if callable(self._keys):
            self._keys = self._keys()
        return self._keys

    def _connect(self) -> StoreSession:
        from boxbox.backup.uploader import StoreSession

        client = self.connector()
        try:
            reply = client.login()
            marker, ours = reply.client_store_marker, self.state.store_marker
            if marker and marker != ours:
                if marker >> 32 == self.cid or self.take_over:
                    log.warning("the store marker %#x is not the one in our state (%#x): our state is stale; "
                                "this run rebuilds it from the store", marker, ours)
                    self._rebuild = True
                else:
                    self.result.marker_conflict = True
                    raise InUse(f"the store was written by another client (store marker {marker:#x}, "
                                f"ours {ours:#x}); backups are paused",
                                hint="two machines must not share an account; if this machine replaces the "
                                     "other one, `boxbox ctl force-sync` takes the account over")
            elif not marker and ours:
                log.warning("the store has no client marker: the account was emptied or recreated; "
                            "this run rebuilds the state from the store")
                self._rebuild = True
            self.result.store_usage = {"used": reply.blocks_used * reply.block_size,
                                       "soft_limit": reply.blocks_soft_limit * reply.block_size,
                                       "hard_limit": reply.blocks_hard_limit * reply.block_size}
            full = bool(reply.blocks_hard_limit) and reply.blocks_used >= reply.blocks_hard_limit
            if full:
                log.warning("the store is full (%d of %d blocks): uploads paused, deletions go on",
                            reply.blocks_used, reply.blocks_hard_limit)
        except BaseException:
            client.close()
            raise
        self.result.connected = True
        return StoreSession(client, self.keys, self.settings, store_full=full, should_stop=self.should_stop)

    def run(self) -> RunResult:
        r = self.result
        r.started = time.time()
        try:
            try:
                self._run()
            except _Rebuild:
                self.state.forget_store()
                self._run()
            r.ok = not (r.stats.upload_errors or r.store_full)
            if r.store_full:
                r.error = "the store is full: some files were not uploaded"
            elif r.stats.upload_errors:
                r.error = f"{len(r.stats.upload_errors)} upload(s) failed"
        except Stopped:
            r.error = "stopped"
            self._close(False)
        except BoxboxError as e:
            r.error = f"{e}; hint: {e.hint}" if e.hint else str(e)
            self._close(False)
            log.error("backup run failed: %s", e)
        except OSError as e:
            r.error = f"{os.fsdecode(e.filename)}: {e.strerror}" if e.filename else f"{e.strerror or e}"
            self._close(False)
            log.error("backup run failed: %s", r.error)
        r.finished = time.time()
        return r

    def _close(self, finish: bool) -> None:
        s = self.session
        if s is None:
            return
        self.result.bytes_sent = s.bytes_sent
        self.result.store_full = s.store_full
        if finish:
            s.client.finish()
        else:
            s.client.close()

    def _run(self) -> None:
        cfg = self.cfg
        state = self.state
        locations = cfg.groups.get("location", {})
        for name, loc in locations.items():
            ls = state.location(name)
            sc = Scanner(loc["path"], Rules.from_config(cfg, name), ls.records, on_progress=self._progress)
            sync = None
            for change in sc:
                if self.should_stop():
                    raise Stopped()
                if self.session is None:
                    self.session = self._connect()
                    self.result.stats = self.session.stats
                    if self._rebuild:
                        self._rebuild = False
                        raise _Rebuild()
                if sync is None:
                    from boxbox.backup.uploader import LocationSync

                    sync = LocationSync(self.session, name, str(loc["path"]), ls, force=self.force)
                sync.sync(change)
            for err in sc.errors:
                self.result.stats.read_errors.append(f"{name}:{os.fsdecode(err.path) or '/'}: {err.message}")
            if sync is not None:
                sync.finish()
                if sc.complete:
                    sync.settle(sc)
            if sc.complete:
                ls.records = sc.records
        if self.session is None:
            log.info("nothing changed: no connection made")
            return
        s = self.session
        s.drain()
        self._retire_locations(s, set(locations))
        marker = (self.cid << 32) | ((state.store_marker + 1) & 0xFFFFFFFF or 1)
        s.client.set_client_store_marker(marker)
        state.store_marker = marker
        self._close(True)
        state_mod.save(cfg["client"]["data_directory"] / "state", state)
        log.info("backup run done: %d files uploaded (%d as diffs), %d moved, %d deleted, %d bytes sent",
                 s.stats.files_uploaded, s.stats.diffs, s.stats.moved, s.stats.deleted, self.result.bytes_sent)

    def _retire_locations(self, s: StoreSession, configured: set[str]) -> None:
        """Locations on the store but no longer configured are deleted after delete_redundant_locations_after.

        When each was first seen unconfigured is kept in data_directory/redundant-locations (JSON).
        """
        from boxbox.backup.uploader import ROOT_DIRECTORY_ID
        from boxbox.crypto import seal as sealing
        from boxbox.objects.directory import DELETED, DIR, OLD, Directory

        path = self.cfg["client"]["data_directory"] / "redundant-locations"
        seen: dict[str, float] = {}
        if path.exists():  # json only then: importing it is ~0.3 MiB at the end of every run
            import json

            try:
                seen = json.loads(path.read_text())
            except (OSError, ValueError):
                pass
        root = Directory.parse(s.client.list_directory(ROOT_DIRECTORY_ID, flags_not_set=OLD | DELETED))
        now = time.time()
        after = self.cfg["client"]["delete_redundant_locations_after"]
        current: dict[str, float] = {}
        for e in root.entries:
            if not e.flags & DIR:
                continue
            try:
                name = sealing.open_entry_name(self.keys, ROOT_DIRECTORY_ID, e.sealed_name, "location").decode()
            except (BoxboxError, UnicodeDecodeError):
                continue  # not one of ours (other keys): leave it alone
            if name in configured:
                continue
            since = seen.get(name, now)
            if now - since >= after:
                s.client.delete_directory(e.object_id)
                self.state.locations.pop(name, None)
                log.warning("location %r is no longer configured: deleted from the store (marked deleted; "
                            "housekeeping removes it)", name)
            else:
                current[name] = since
                log.info("location %r is no longer configured: deleted from the store in %.0f s", name,
                         since + after - now)
        if current != seen:
            import json

            write_atomic(path, json.dumps(current).encode(), mode=0o600)

    def _progress(self) -> None:
        if self.should_stop():
            raise Stopped()
        if self.session is not None:
            self.session.keep_alive()
