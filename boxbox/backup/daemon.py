"""The client daemon's loop: when to run, scripts, backoff, status, and the ctl commands.

Lazy mode (`automatic_backup = yes`) runs every `update_store_interval` plus up to 10 %
random jitter (so a fleet started together does not stampede the server), after asking
`sync_allow_script`; snapshot mode runs only on `ctl sync`. A failed run (network, server)
is retried after a backoff that doubles from 10 s up to the interval. A store marker from
another client pauses the daemon until `ctl force-sync`.

Runs happen in the main thread; the ctl threads only set requests and wait on one
condition variable for run counters to move.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boxbox import config
from boxbox.atomic import write_atomic
from boxbox.backup import events, state as state_mod, textfile
from boxbox.backup.run import BackupRun, RunResult, client_id
from boxbox.ca.names import parse_account
from boxbox.errors import BoxboxError, ConfigError

if TYPE_CHECKING:
    from boxbox.crypto.keys import Keys

log = logging.getLogger(__name__)

#: first retry after a failed run; doubles up to update_store_interval
BACKOFF_START = 10.0
JITTER = 0.1
SCRIPT_TIMEOUT = 60.0


def load_config(path: str | Path) -> config.Config:
    """The client config, checked: every location an existing directory (config requires one)."""
    cfg = config.load(path, "client")
    for name, loc in cfg.groups.get("location", {}).items():
        if not Path(loc["path"]).is_dir():
            raise ConfigError(f"{cfg.path}:location {name}.path: {loc['path']} is not a directory")
    parse_account(cfg["client"]["account"])
    return cfg


def socket_path(cfg: config.Config) -> Path:
    c = cfg["client"]
    return c["command_socket"] or c["data_directory"] / "command.sock"


class Daemon:
    """State shared by the run loop and the ctl threads."""

    def __init__(self, config_path: str | Path, *, defer_keys: bool = False) -> None:
        """`defer_keys`: load the keys file on first use, not now (`client --once`): a run that finds
        nothing changed then never loads it, nor `hashlib`'s OpenSSL (~4 MiB, ~5 ms) to derive them."""
        self.config_path = config_path
        self.defer_keys = defer_keys
        self.cfg = load_config(config_path)
        self._apply_config()
        self.cond = threading.Condition()
        self.request: str | None = None  # "sync" or "force"
        self.deferred: str | None = None  # a "sync" that sync_allow_script put off until next_run
        self.stopping = False
        self.reload_requested = False
        self.running = False
        self.started = 0  # runs started
        self.finished = 0  # runs finished
        self.results: dict[int, RunResult] = {}
        self.paused = ""  # why backups are paused (store marker), "" when not
        self.next_run: float | None = None
        self.totals = {"runs": 0, "files_uploaded": 0, "bytes_sent": 0, "failed_runs": 0}
        self.store_usage: dict[str, float] | None = None  # at the last login, with its time ("at")
        self.last_success = textfile.last_success(self.cfg["client"]["metrics_textfile"])
        self._backoff = 0.0
        self._last_notified: dict[str, str] = {}

    def _apply_config(self) -> None:
        c = self.cfg["client"]
        self._keys: Keys | None = None
        if not self.defer_keys:
            self._keys = self.keys  # checked at start-up and at each reload: a bad keys file keeps the old config
        self.account = parse_account(c["account"])
        data = c["data_directory"]
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.state_path = data / "state"
        self.cid = client_id(data)
        self.lazy = c["automatic_backup"]

    @property
    def keys(self) -> Keys:
        """The keys file's keys, loaded on first use when deferred."""
        if self._keys is None:
            from boxbox.crypto.keys import load_keys

            self._keys = load_keys(self.cfg["client"]["keys_file"])
        return self._keys

    # ------------------------------------------------------------ ctl side
    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        """One ctl request (runs in a ctl thread)."""
        command = req.get("command")
        with self.cond:
            if command == "status":
                return {"ok": True, **self.status()}
            if command in ("sync", "force-sync"):
                self._request("force" if command == "force-sync" else "sync")
                return {"ok": True, "message": "sync requested"}
            if command == "sync-and-wait":
                target = self._request("sync")
                return self._wait_result(target)
            if command == "wait-for-sync":
                seen = self.started
                self.cond.wait_for(lambda: self.started > seen or self.stopping)
                return {"ok": not self.stopping or self.started > seen, "message": "a run started"}
            if command == "wait-for-end":
                target = self.started if self.running else self.started + 1
                return self._wait_result(target)
            if command == "reload":
                self.reload_requested = True
                self.cond.notify_all()
                return {"ok": True, "message": "reload requested"}
            if command == "terminate":
                self.stop()
                return {"ok": True, "message": "terminating"}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def _request(self, kind: str) -> int:
        """Ask for a run; returns the number of the run that will serve it."""
        if self.request != "force":
            self.request = kind
        self.cond.notify_all()
        return self.started + 1

    def _wait_result(self, target: int) -> dict[str, Any]:
        self.cond.wait_for(lambda: self.finished >= target or self.stopping)
        result = self.results.get(target)
        if result is None:
            return {"ok": False, "error": "the daemon stopped before the run ended"}
        return {"ok": result.ok, "error": result.error, "run": result.to_json()}

    def stop(self, *_: Any) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def request_reload(self, *_: Any) -> None:
        with self.cond:
            self.reload_requested = True
            self.cond.notify_all()

    def status(self) -> dict[str, Any]:
        last = self.results.get(self.finished)
        if self.stopping:
            state = "stopping"
        elif self.running:
            state = "running"
        elif self.paused:
            state = "paused"
        else:
            state = "idle"
        return {"state": state, "mode": "lazy" if self.lazy else "snapshot", "pid": os.getpid(),
                "paused": self.paused, "next_run": self.next_run, "runs_started": self.started,
                "last_run": last.to_json() if last is not None else None, "last_success": self.last_success,
                "store_usage": self.store_usage, "totals": dict(self.totals)}

    # ------------------------------------------------------------ scripts
    def notify(self, event: str, detail: str = "", fields: dict[str, object] | None = None) -> None:
        """Send EVENT to syslog (always) and run notify_script (a repeated error event is suppressed unless
        configured); `fields` go into the syslog line's key=value tail."""
        script = self.cfg["client"]["notify_script"]
        log.info("event %s%s", event, f": {detail}" if detail else "")
        events.send(event, detail, {"account": f"{self.account:08x}", **(fields or {})})
        if event in events.ERROR_EVENTS:
            if self._last_notified.get(event) == detail and not self.cfg["client"]["notify_repeats"]:
                return
            self._last_notified[event] = detail
        elif event == "backup-ok":
            self._last_notified.clear()
        if script is None:
            return
        import subprocess  # only with a script: a run that changes nothing starts faster without it

        env = dict(os.environ, BOXBOX_EVENT=event, BOXBOX_DETAIL=detail)
        try:
            subprocess.run([str(script), event], env=env, timeout=SCRIPT_TIMEOUT, check=False,
                           stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as e:
            log.error("notify_script %s %s failed: %s", script, event, e)

    def sync_allowed(self) -> float:
        """0 to run now, else seconds to wait: what sync_allow_script prints ('now' or a number)."""
        script = self.cfg["client"]["sync_allow_script"]
        if script is None:
            return 0.0
        import subprocess

        try:
            out = subprocess.run([str(script)], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT,
                                 stdin=subprocess.DEVNULL).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            log.error("sync_allow_script %s failed (%s): running now", script, e)
            return 0.0
        if out == "now" or not out:
            return 0.0
        try:
            delay = float(out.split()[0])
        except ValueError:
            log.error("sync_allow_script %s printed %r, expected 'now' or seconds: running now", script, out)
            return 0.0
        return max(0.0, delay)

    # ------------------------------------------------------------ runs
    def run_once(self, force: bool = False, take_over: bool = False) -> RunResult:
        """One backup run with notifications; updates counters and wakes waiting ctl commands."""
        with self.cond:
            self.started += 1
            number = self.started
            self.running = True
            self.cond.notify_all()
        self.notify("backup-start")
        state = state_mod.load_or_rebuild(self.state_path, self.account)
        run = BackupRun(self.cfg, lambda: self.keys, state, cid=self.cid, force=force, take_over=take_over,
                        should_stop=lambda: self.stopping)
        result = run.run()
        self._after_run(number, result)
        return result

    def _after_run(self, number: int, result: RunResult) -> None:
        self.paused = result.error if result.marker_conflict else ""
        if result.ok:
            self.last_success = result.finished
        if result.store_usage is not None:
            self.store_usage = {**result.store_usage, "at": result.finished}
        failed_network = not result.ok and not result.store_full and not self.paused \
            and not result.stats.upload_errors
        self.next_run = self._next_scheduled(not failed_network)
        if result.store_full and self.next_run is None:
            self.next_run = time.time() + max(BACKOFF_START, self.cfg["client"]["update_store_interval"])
        s = result.stats
        summary = {"ok": int(result.ok), "files_uploaded": s.files_uploaded, "bytes_sent": result.bytes_sent,
                   "read_errors": len(s.read_errors), "upload_errors": len(s.upload_errors),
                   "seconds": round(result.finished - result.started, 3)}
        for text in s.read_errors:
            self.notify("read-error", text)
        if result.store_full:
            self.notify("store-full", result.error)
        if result.ok:
            self.notify("backup-ok", fields=summary)
        else:
            self.notify("backup-error", result.error, summary)
        self.notify("backup-finish", fields=summary)
        self._write_textfile(result)
        with self.cond:
            self.totals["runs"] += 1
            self.totals["files_uploaded"] += result.stats.files_uploaded
            self.totals["bytes_sent"] += result.bytes_sent
            self.totals["failed_runs"] += not result.ok
            self.results[number] = result
            self.results.pop(number - 16, None)
            self.finished = number
            self.running = False
            self.cond.notify_all()

    def _write_textfile(self, result: RunResult) -> None:
        """node_exporter textfile (metrics_textfile), replaced atomically after each run."""
        path = self.cfg["client"]["metrics_textfile"]
        if path is None:
            return
        text = textfile.render(result, last_success=self.last_success, next_run=self.next_run,
                               paused=bool(self.paused), store_usage=self.store_usage,
                               runs=self.totals["runs"] + 1, failed_runs=self.totals["failed_runs"] + (not result.ok))
        try:
            write_atomic(path, text.encode(), mode=0o644)
        except OSError as e:
            log.error("metrics_textfile %s: %s", path, e.strerror)

    def reload(self) -> None:
        try:
            cfg = load_config(self.config_path)
        except BoxboxError as e:
            log.error("reload failed, keeping the running config: %s", e)
            return
        old = self.cfg
        self.cfg = cfg
        try:
            self._apply_config()
        except BoxboxError as e:
            log.error("reload failed, keeping the running config: %s", e)
            self.cfg = old
            self._apply_config()
            return
        log.info("reloaded %s", self.config_path)

    def _next_scheduled(self, last_ok: bool) -> float | None:
        if not last_ok:
            interval = self.cfg["client"]["update_store_interval"]
            self._backoff = min(max(self._backoff * 2, BACKOFF_START), max(interval, BACKOFF_START))
            return time.time() + self._backoff
        self._backoff = 0.0
        if not self.lazy or self.paused:
            return None
        interval = self.cfg["client"]["update_store_interval"]
        return time.time() + interval * (1 + random.uniform(0, JITTER))

    def loop(self) -> None:
        """Until stopped: wait for the schedule or a request, then run."""
        self.next_run = time.time() if self.lazy else None
        while True:
            with self.cond:
                while True:
                    if self.stopping:
                        return
                    if self.reload_requested:
                        break
                    if self.request is not None:
                        break
                    if self.next_run is not None and time.time() >= self.next_run and not self.paused:
                        break
                    timeout = None if self.next_run is None or self.paused else max(0.0, self.next_run - time.time())
                    self.cond.wait(timeout)
                if self.reload_requested:
                    self.reload_requested = False
                    reload = True
                else:
                    reload = False
                kind, self.request = self.request, None
                if kind != "force" and self.deferred is not None and time.time() >= (self.next_run or 0):
                    kind = self.deferred  # a sync the script deferred: due now
                if kind == "force" or kind == self.deferred:
                    self.deferred = None
            if reload:
                self.reload()
                if kind is None:
                    continue
            force = kind == "force"
            if not force and (kind is not None or self.lazy):
                delay = self.sync_allowed()
                if delay:
                    log.info("sync_allow_script: waiting %.0f s", delay)
                    self.next_run = time.time() + delay
                    self.deferred = kind
                    continue
            if self.paused and not force:
                log.warning("backups are paused: %s", self.paused)
                with self.cond:  # answer the waiting ctl commands with the reason
                    self.started += 1
                    self.results[self.started] = RunResult(error=self.paused, started=time.time(),
                                                           finished=time.time())
                    self.finished = self.started
                    self.cond.notify_all()
                continue
            self.run_once(force=force, take_over=force)  # schedules the next run (_after_run)
