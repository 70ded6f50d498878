"""`ctl status --json`, the node_exporter textfile and the syslog event lines match what the runs did."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from boxbox.backup import events

from tests.clientutil import Daemon, StoreServer, client_config
from tests.test_metrics import parse_exposition

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(tmp_path: Path, test_ca: Any) -> Iterator[StoreServer]:
    srv = StoreServer(tmp_path, test_ca)
    srv.start()
    yield srv
    srv.stop()


def textfile(path: Path) -> dict[str, float]:
    series, types = parse_exposition(path.read_text())
    assert all(not labels for _, labels in series)
    assert types["boxbox_client_runs_total"] == "counter"
    return {name: v for (name, _), v in series.items()}


def test_status_and_textfile_match_the_runs(server: StoreServer, tmp_path: Path) -> None:
    account = server.new_account(soft="500M", hard="600M")
    tree = tmp_path / "tree"
    tree.mkdir()
    sizes = [1000, 20000, 70000]
    for i, n in enumerate(sizes):
        (tree / f"f{i}").write_bytes(os.urandom(n))
    prom = tmp_path / "textfile" / "boxbox.prom"
    prom.parent.mkdir()
    conf = client_config(tmp_path, server, account, tree, extra=f"metrics_textfile = {prom}\n")
    d = Daemon(conf, tmp_path / "daemon.log")
    try:
        assert d.status()["last_success"] is None and not prom.exists()
        d.ctl("sync-and-wait")
        status = d.status()
        run = status["last_run"]
        assert status["state"] == "idle" and status["next_run"] is None  # snapshot mode: on request only
        assert run["ok"] and run["error"] == "" and run["read_errors"] == [] and run["upload_errors"] == []
        assert run["files_uploaded"] == 3 and run["bytes_sent"] > sum(sizes)
        assert run["started"] <= run["finished"] == status["last_success"]
        usage = status["store_usage"]
        assert usage["hard_limit"] == 600 << 20 and usage["soft_limit"] == 500 << 20
        assert 0 < usage["used"] < sum(sizes)  # at login, before this run's uploads
        assert usage["at"] == run["finished"]

        t = textfile(prom)
        assert oct(prom.stat().st_mode & 0o777) == "0o644"
        assert t["boxbox_client_last_run_ok"] == 1 and t["boxbox_client_last_run_files_uploaded"] == 3
        assert t["boxbox_client_last_run_bytes_sent"] == run["bytes_sent"]
        assert t["boxbox_client_last_run_start_timestamp_seconds"] == pytest.approx(run["started"], abs=0.001)
        assert t["boxbox_client_last_run_timestamp_seconds"] == pytest.approx(run["finished"], abs=0.001)
        assert t["boxbox_client_last_success_timestamp_seconds"] == pytest.approx(run["finished"], abs=0.001)
        assert t["boxbox_client_store_used_bytes"] == usage["used"]
        assert t["boxbox_client_store_hard_limit_bytes"] == 600 << 20
        assert t["boxbox_client_next_run_timestamp_seconds"] == 0
        assert t["boxbox_client_runs_total"] == 1 and t["boxbox_client_failed_runs_total"] == 0
        first_success = run["finished"]

        # over the hard limit: the next run with something to upload fails, and says why
        server.accounts("setlimit", f"{account:x}", "--soft", "4k", "--hard", "8k")
        (tree / "f3").write_bytes(os.urandom(5000))
        d.ctl("sync-and-wait", exit_code=1)
        status = d.status()
        run = status["last_run"]
        assert not run["ok"] and run["store_full"] and "full" in run["error"]
        assert status["last_success"] == first_success
        assert status["store_usage"]["hard_limit"] == 8192
        t = textfile(prom)
        assert t["boxbox_client_last_run_ok"] == 0 and t["boxbox_client_store_full"] == 1
        assert t["boxbox_client_last_success_timestamp_seconds"] == pytest.approx(first_success, abs=0.001)
        assert t["boxbox_client_failed_runs_total"] == 1 and t["boxbox_client_runs_total"] == 2
        assert t["boxbox_client_store_hard_limit_bytes"] == 8192
        assert t["boxbox_client_next_run_timestamp_seconds"] > run["finished"]  # retried after a while
        text = d.ctl("status").stdout
        assert "store usage at last login" in text and "8.0 KiB hard limit" in text
    finally:
        d.stop()

    # a restarted daemon still knows when the last backup succeeded
    d = Daemon(conf, tmp_path / "daemon2.log")
    try:
        assert d.status()["last_success"] == pytest.approx(first_success, abs=0.001)
    finally:
        d.stop()


# ---------------------------------------------------------------- syslog event lines
def test_event_line_has_a_stable_key_value_tail() -> None:
    line = events.line("backup-error", 'the store is "full"\nreally', {"account": "0000002a", "files_uploaded": 3})
    assert line == ('backup-error: the store is "full" really -- event=backup-error account=0000002a '
                    'files_uploaded=3 detail="the store is \\"full\\" really"')
    assert events.line("backup-start", "", {"account": "0000002a"}) == \
        "backup-start -- event=backup-start account=0000002a"
    assert events.quote("a\\b c") == '"a\\\\b c"' and events.quote("/x/y.txt") == "/x/y.txt"


def test_events_go_to_syslog_with_the_tag_and_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    import syslog

    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(syslog, "openlog", lambda *a: sent.append(("open", *a)))
    monkeypatch.setattr(syslog, "syslog", lambda *a: sent.append(("log", *a)))
    events.send("store-full", "the store is full", {"account": "0000002a"})
    events.send("backup-ok", "", {"account": "0000002a", "ok": 1})
    assert sent == [
        ("open", "boxbox-event", syslog.LOG_PID, syslog.LOG_DAEMON),
        ("log", syslog.LOG_ERR, 'store-full: the store is full -- event=store-full account=0000002a '
                                'detail="the store is full"'),
        ("open", "boxbox-event", syslog.LOG_PID, syslog.LOG_DAEMON),
        ("log", syslog.LOG_INFO, "backup-ok -- event=backup-ok account=0000002a ok=1"),
    ]


def test_every_event_reaches_syslog_even_when_the_script_is_not_run_again(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from boxbox.backup.daemon import Daemon

    from tests.test_backup_daemon import _conf

    sent: list[tuple[str, str, dict[str, object]]] = []
    monkeypatch.setattr(events, "send", lambda *a: sent.append(a))
    runs = tmp_path / "runs"
    script = tmp_path / "notify.sh"
    script.write_text(f"#!/bin/sh\necho \"$1\" >> {runs}\n")
    script.chmod(0o755)
    d = Daemon(_conf(tmp_path, f"notify_script = {script}\n"))
    d.notify("store-full", "the store is full")
    d.notify("store-full", "the store is full")
    assert runs.read_text().split() == ["store-full"]  # the script once
    assert sent == [("store-full", "the store is full", {"account": "00000001"})] * 2
