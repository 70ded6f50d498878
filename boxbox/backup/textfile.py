"""The client's node_exporter textfile (`metrics_textfile`): what `ctl status --json` says, for Prometheus.

node_exporter's textfile collector reads every `*.prom` file in its directory at each
scrape; the daemon replaces this one atomically after each run, so a scrape never sees half
a file. The last successful run's time is read back from the previous file at start, so a
restarted daemon does not report "never" and trip a no-backup alert.
"""

from __future__ import annotations

import re
from pathlib import Path

from boxbox.backup.run import RunResult

LAST_SUCCESS = "boxbox_client_last_success_timestamp_seconds"
_LAST_SUCCESS_RE = re.compile(rf"^{LAST_SUCCESS} ([0-9.eE+]+)$", re.MULTILINE)


def last_success(path: Path | None) -> float | None:
    """The last successful run's time from an earlier textfile, or None."""
    if path is None:
        return None
    try:
        m = _LAST_SUCCESS_RE.search(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    if m is None:
        return None
    return float(m.group(1)) or None


def render(result: RunResult, *, last_success: float | None, next_run: float | None, paused: bool,
           store_usage: dict[str, float] | None, runs: int, failed_runs: int) -> str:
    """The whole file: HELP, TYPE and value of every family."""
    s = result.stats
    usage = store_usage or {}
    families: list[tuple[str, str, str, float]] = [
        ("boxbox_client_last_run_start_timestamp_seconds", "gauge", "when the last run started", result.started),
        ("boxbox_client_last_run_timestamp_seconds", "gauge", "when the last run ended", result.finished),
        ("boxbox_client_last_run_duration_seconds", "gauge", "how long the last run took",
         result.finished - result.started),
        ("boxbox_client_last_run_ok", "gauge", "1 if the last run succeeded", int(result.ok)),
        (LAST_SUCCESS, "gauge", "when the last successful run ended (a run with nothing to upload counts); "
         "0 = never", last_success or 0),
        ("boxbox_client_next_run_timestamp_seconds", "gauge", "when the next run is due; 0 = on `boxbox ctl sync`",
         next_run or 0),
        ("boxbox_client_last_run_files_uploaded", "gauge", "files uploaded by the last run", s.files_uploaded),
        ("boxbox_client_last_run_bytes_sent", "gauge", "bytes sent to the store by the last run", result.bytes_sent),
        ("boxbox_client_last_run_read_errors", "gauge", "files or directories the last run could not read",
         len(s.read_errors)),
        ("boxbox_client_last_run_upload_errors", "gauge", "uploads the store refused in the last run",
         len(s.upload_errors)),
        ("boxbox_client_store_full", "gauge", "1 if the last run found the account at its hard limit",
         int(result.store_full)),
        ("boxbox_client_paused", "gauge", "1 if backups are paused (another client's store marker)", int(paused)),
        ("boxbox_client_runs_total", "counter", "runs since the daemon started", runs),
        ("boxbox_client_failed_runs_total", "counter", "failed runs since the daemon started", failed_runs),
    ]
    if store_usage is not None:
        families += [
            ("boxbox_client_store_used_bytes", "gauge", "account usage at the last login", usage["used"]),
            ("boxbox_client_store_soft_limit_bytes", "gauge", "account soft limit at the last login",
             usage["soft_limit"]),
            ("boxbox_client_store_hard_limit_bytes", "gauge", "account hard limit at the last login",
             usage["hard_limit"]),
            ("boxbox_client_store_usage_timestamp_seconds", "gauge", "when the store usage was read (last login)",
             usage["at"]),
        ]
    lines: list[str] = []
    for name, kind, help, value in families:
        text = f"{value:.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
        lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}", f"{name} {text}"]
    return "\n".join(lines) + "\n"
