"""Server metrics: the registry, a strict parse of the exposition format, and a real server's /metrics."""

from __future__ import annotations

import math
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from boxbox.errors import ConfigError, FormatError, ProgrammingError
from boxbox.store import metrics
from boxbox.store.exporter import USAGE_TTL, AccountUsage, parse_address

from tests.clientutil import StoreServer, client_config, run_once
from tests.conftest import free_port, run_boxbox
from tests.serverutil import make_store

# ---------------------------------------------------------------- a strict exposition parser
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
VALUE = r"[+-]?(?:\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|Inf)|NaN"
HELP_RE = re.compile(rf"# HELP ({NAME}) ((?:[^\\\n]|\\\\|\\n)*)")
TYPE_RE = re.compile(rf"# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)")
SAMPLE_RE = re.compile(rf"({NAME})(?:\{{(.*)\}})? ({VALUE})(?: -?\d+)?")
PAIR_RE = re.compile(rf'({LABEL})="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(,|$)')

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _labels(text: str, line: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = PAIR_RE.match(text, pos)
        assert m, f"bad labels at {text[pos:]!r} in {line!r}"
        value = re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1), m.group(2))
        pairs.append((m.group(1), value))
        pos = m.end()
        assert m.group(3) == "," or pos == len(text), line
    names = [n for n, _ in pairs]
    assert len(names) == len(set(names)), f"a label twice in {line!r}"
    return tuple(sorted(pairs))


def parse_exposition(text: str) -> tuple[Series, dict[str, str]]:
    """Every line must be a HELP, a TYPE or a sample of the family last typed; returns (series, types)."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    types: dict[str, str] = {}
    helps: set[str] = set()
    series: Series = {}
    current: str | None = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            m = HELP_RE.fullmatch(line)
            assert m and m.group(1) not in helps, f"bad or repeated HELP: {line!r}"
            helps.add(m.group(1))
            continue
        if line.startswith("# TYPE "):
            m = TYPE_RE.fullmatch(line)
            assert m and m.group(1) not in types, f"bad or repeated TYPE: {line!r}"
            types[m.group(1)] = m.group(2)
            current = m.group(1)
            continue
        assert not line.startswith("#") and line.strip() == line and line, f"stray line {line!r}"
        m = SAMPLE_RE.fullmatch(line)
        assert m, f"not a sample line: {line!r}"
        name, labels = m.group(1), _labels(m.group(2) or "", line)
        assert current is not None, f"sample before any TYPE: {line!r}"
        kind = types[current]
        allowed = {current} if kind != "histogram" else {f"{current}_bucket", f"{current}_sum", f"{current}_count"}
        assert name in allowed, f"{name} is not a sample of family {current} ({kind})"
        if kind == "counter":
            assert name.endswith("_total"), f"counter {name} should end in _total"
        if name.endswith("_bucket"):
            assert "le" in dict(labels), line
        value = float(m.group(3).replace("Inf", "inf"))
        if kind == "counter":
            assert value >= 0, line
        assert (name, labels) not in series, f"series twice: {line!r}"
        series[(name, labels)] = value
    for name, kind in types.items():
        assert name in helps, f"{name} has no HELP"
        if kind == "histogram":
            _check_histogram(name, series)
    return series, types


def _check_histogram(name: str, series: Series) -> None:
    groups: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    for (n, labels), v in series.items():
        if n == f"{name}_bucket":
            rest = tuple(p for p in labels if p[0] != "le")
            groups.setdefault(rest, []).append((float(dict(labels)["le"].replace("Inf", "inf")), v))
    for rest, buckets in groups.items():
        buckets.sort()
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), f"{name}{rest}: buckets not cumulative"
        assert buckets[-1][0] == math.inf and buckets[-1][1] == series[(f"{name}_count", rest)]
        assert (f"{name}_sum", rest) in series


def value(series: Series, metric: str, /, **labels: str) -> float:
    return series.get((metric, tuple(sorted(labels.items()))), 0.0)


def test_parser_rejects_what_prometheus_would() -> None:
    good = '# HELP a_total x\n# TYPE a_total counter\na_total{k="v\\"q"} 1\n'
    assert parse_exposition(good)[0] == {("a_total", (("k", 'v"q'),)): 1.0}
    for bad in ('# TYPE a_total counter\na_total 1\n',  # no HELP
                '# HELP a x\n# TYPE a gauge\nb 1\n',  # sample of another family
                '# HELP a x\n# TYPE a gauge\na{k="v} 1\n',  # unterminated label
                '# HELP a x\n# TYPE a gauge\na 1\na 2\n',  # series twice
                '# HELP a x\n# TYPE a gauge\na one\n',
                '# HELP a x\n# TYPE a gauge\na 1'):  # no final newline
        with pytest.raises(AssertionError):
            parse_exposition(bad)


# ---------------------------------------------------------------- the registry
def test_registry_renders_escaped_labels_and_histograms() -> None:
    reg = metrics.Registry()
    c = reg.counter("t_events_total", "events\nwith a newline", ("who",))
    c.inc(who='a "quoted" \\ name\n')
    c.inc(2.5, who="b")
    h = reg.histogram("t_size_bytes", "sizes", ("kind",), buckets=(10, 100))
    for v in (5, 50, 500):
        h.observe(v, kind="whole")
    g = metrics.Gauge("t_collected", "from a collector")
    g.set(float("inf"))
    reg.add_collector(lambda: [g])
    series, types = parse_exposition(reg.render())
    assert value(series, "t_events_total", who='a "quoted" \\ name\n') == 1
    assert value(series, "t_events_total", who="b") == 2.5
    assert [value(series, "t_size_bytes_bucket", kind="whole", le=le) for le in ("10", "100", "+Inf")] == [1, 2, 3]
    assert value(series, "t_size_bytes_sum", kind="whole") == 555
    assert value(series, "t_collected") == math.inf
    assert types == {"t_events_total": "counter", "t_size_bytes": "histogram", "t_collected": "gauge"}


def test_registry_refuses_misuse() -> None:
    reg = metrics.Registry()
    c = reg.counter("t_total", "x", ("a",))
    with pytest.raises(ProgrammingError):
        c.inc(-1, a="x")
    with pytest.raises(ProgrammingError):
        c.inc(b="x")
    with pytest.raises(ProgrammingError):
        reg.gauge("t_total", "again")


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9201", "f") == ("127.0.0.1", 9201)
    assert parse_address("[::1]:0", "f") == ("::1", 0)
    for bad in ("9201", "localhost", ":9201", "host:99999", "host:x"):
        with pytest.raises(ConfigError, match="f: expected ADDRESS:PORT"):
            parse_address(bad, "f")


def test_account_usage_comes_from_the_info_files(tmp_path: Path) -> None:
    """What another process writes to the info file (limits, usage, last backup) is what /metrics shows."""
    store = make_store(tmp_path, (0x2A, 100, 200))
    other = make_store(tmp_path, (0x2B, 10, 20))  # a second process on the same store
    usage = AccountUsage(store, ttl=0)
    other.update_info(0x2A, hard_limit=300, blocks_old=7, last_backup=1_700_000_000, name="nas")
    reg = metrics.Registry()
    reg.add_collector(usage)
    series, _ = parse_exposition(reg.render())
    who = {"account": "0000002a", "name": "nas"}
    assert value(series, "boxbox_account_hard_limit_bytes", **who) == 300 * 4096
    assert value(series, "boxbox_account_usage_bytes", kind="old", **who) == 7 * 4096
    assert value(series, "boxbox_account_last_backup_timestamp_seconds", **who) == 1_700_000_000
    assert value(series, "boxbox_accounts") == 2
    cached = AccountUsage(store, ttl=3600)
    cached()
    other.update_info(0x2A, hard_limit=400)
    hard = next(f for f in cached() if f.name == "boxbox_account_hard_limit_bytes")
    assert hard.value(**who) == 300 * 4096  # within the TTL: no new read


# ---------------------------------------------------------------- a real server
def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port: int) -> Series:
    status, text = get(port, "/metrics")
    assert status == 200
    return parse_exposition(text)[0]


def scrape_until(port: int, ready: Callable[[Series], bool], timeout: float = USAGE_TTL + 5) -> Series:
    """Scrape until `ready` (account usage is cached, session counters land when the session ends)."""
    deadline = time.monotonic() + timeout
    while True:
        series = scrape(port)
        if ready(series) or time.monotonic() > deadline:
            return series
        time.sleep(0.2)


def with_metrics(server: StoreServer, extra: str = "") -> int:
    port = free_port()
    server.config.write_text(server.config.read_text().replace(
        "[server]\n", f"[server]\nmetrics = yes\nmetrics_listen = 127.0.0.1:{port}\n{extra}", 1))
    return port


@pytest.fixture
def server(tmp_path: Path, test_ca: Any) -> Any:
    s = StoreServer(tmp_path, test_ca)
    yield s
    s.stop()


SECRET_NAMES = ("secret-payroll-2024.xlsx", "private-diary", "holiday-photo.jpg")


def test_metrics_move_with_backup_and_restore_and_never_show_names(server: StoreServer, tmp_path: Path) -> None:
    port = with_metrics(server, "housekeeping_interval = 1s\nscrub_interval = 1s\n")
    server.start()
    account = server.new_account()
    server.accounts("name", f"{account:x}", 'alice "laptop"')
    before = scrape(port)
    who = {"account": f"{account:08x}", "name": 'alice "laptop"'}
    assert value(before, "boxbox_account_last_backup_timestamp_seconds", **who) == 0
    assert value(before, "boxbox_store_healthy") == 1
    assert value(before, "process_resident_memory_bytes") > 0 and value(before, "process_open_fds") > 0

    home = tmp_path / "home"
    (home / SECRET_NAMES[1]).mkdir(parents=True)
    (home / SECRET_NAMES[0]).write_bytes(b"x" * 5000)
    big = home / SECRET_NAMES[1] / SECRET_NAMES[2]
    big.write_bytes(os.urandom(100 * 1024))  # incompressible; diffed on the next run
    conf = client_config(tmp_path, server, account, home, extra="minimum_file_age = 0\n")
    run_once(conf)
    # account usage is cached for USAGE_TTL seconds; session counters are added when its thread ends
    after = scrape_until(port, lambda s: value(s, "boxbox_account_objects", kind="current", **who) == 2)
    assert value(after, "boxbox_sessions_total", result="finished") > value(before, "boxbox_sessions_total",
                                                                            result="finished")
    assert value(after, "boxbox_upload_size_bytes_count", kind="whole") == 2
    assert value(after, "boxbox_upload_size_bytes_sum", kind="whole") > 100 * 1024
    assert value(after, "boxbox_received_bytes_total") > 100 * 1024
    assert value(after, "boxbox_account_used_bytes", **who) > 100 * 1024
    last = value(after, "boxbox_account_last_backup_timestamp_seconds", **who)
    assert abs(last - time.time()) < 60

    with big.open("r+b") as f:  # change one block: the next run sends a diff
        f.seek(8192)
        f.write(b"changed!" * 512)
    run_once(conf)
    diffed = scrape_until(port, lambda s: value(s, "boxbox_upload_size_bytes_count", kind="diff") > 0)
    assert value(diffed, "boxbox_upload_size_bytes_count", kind="diff") == 1
    assert value(diffed, "boxbox_upload_size_bytes_sum", kind="diff") < 100 * 1024

    out = tmp_path / "restored"
    run_boxbox("query", "--config", str(conf), "restore", "/home", str(out))
    assert (out / SECRET_NAMES[1] / SECRET_NAMES[2]).read_bytes() == big.read_bytes()
    restored = scrape_until(port, lambda s: value(s, "boxbox_sessions_total", result="finished")
                            > value(diffed, "boxbox_sessions_total", result="finished"))
    assert value(restored, "boxbox_sent_bytes_total") - value(diffed, "boxbox_sent_bytes_total") > 100 * 1024

    status, text = get(port, "/metrics")
    for secret in (*SECRET_NAMES, "payroll", "diary", "photo", str(tmp_path)):
        assert secret not in text
    assert not [labels for _, labels in restored if any("/" in v for _, v in labels)], "a path in a label"
    assert get(port, "/nothing")[0] == 404
    assert value(restored, "boxbox_housekeeping_runs_total", result="done") >= 1
    assert value(restored, "boxbox_housekeeping_last_run_timestamp_seconds") > 0
    assert value(restored, "boxbox_scrub_objects_total") > 0 and value(restored, "boxbox_scrub_unrecoverable_objects") == 0


def test_metrics_are_off_by_default(server: StoreServer) -> None:
    port = free_port()
    server.config.write_text(server.config.read_text().replace(
        "[discset 0]", f"metrics_listen = 127.0.0.1:{port}\n\n[discset 0]"))
    server.start()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert "metrics" not in server.log.read_text()


def test_bad_metrics_address_is_one_line(server: StoreServer) -> None:
    server.config.write_text(server.config.read_text().replace(
        "[discset 0]", "metrics = yes\nmetrics_listen = nowhere\n\n[discset 0]"))
    proc = run_boxbox("server", "--config", str(server.config), "--foreground", "--allow-root", exit_code=1)
    assert "server.metrics_listen: expected ADDRESS:PORT" in proc.stderr


def test_monitoring_doc_names_only_real_metrics(tmp_path: Path) -> None:
    """Every boxbox_... name in docs/MONITORING.md and the README's Monitoring section (so in their alert rules) is written."""
    from boxbox.backup import textfile
    from boxbox.backup.run import RunResult
    from boxbox.store.exporter import store_families

    store = make_store(tmp_path, (0x2A, 100, 200))
    reg = metrics.Registry()
    reg.add_collector(lambda: [*AccountUsage(store, ttl=0)(), *store_families(store, lambda: 0)])
    client = textfile.render(RunResult(), last_success=None, next_run=None, paused=False, runs=1, failed_runs=0,
                             store_usage={"used": 1, "soft_limit": 2, "hard_limit": 3, "at": 4})
    written: set[str] = set()
    for text in (metrics.REGISTRY.render(), reg.render(), client):
        series, types = parse_exposition(text)
        written |= set(types) | {name for name, _ in series}
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    section = readme[readme.index("\n## Monitoring\n"):]
    for doc in ((root / "docs" / "MONITORING.md").read_text(), section[:section.index("\n## ", 1)]):
        named = set(re.findall(r"\bboxbox_\w+", doc))
        assert named and named <= written, f"not written by anything: {sorted(named - written)}"
        rules = doc[doc.index("groups:"):]
        for needed in ("boxbox_account_last_backup_timestamp_seconds", "boxbox_account_hard_limit_bytes",
                       "boxbox_discset_directory_present", "boxbox_raid_degraded_reads_total"):
            assert needed in rules


def test_info_files_of_version_2_read_with_no_last_backup() -> None:
    from boxbox.store.info import AccountInfo

    info = AccountInfo(0x2A, True, 10, 20, name="nas", change_count=5, last_backup=1_700_000_123)
    data = info.encode()
    assert AccountInfo.decode(data, "x") == info
    v2 = data[:4] + (2).to_bytes(2, "little") + data[6:-8]
    assert AccountInfo.decode(v2, "x") == info._replace(last_backup=0)
    with pytest.raises(FormatError, match="expected"):
        AccountInfo.decode(data[:-1], "x")


def test_two_servers_on_one_bucket_report_the_same_account(tmp_path: Path, test_ca: Any, seaweed: Any) -> None:
    """Usage and last backup come from the shared info file: the server that did not see the backup knows it."""
    s3 = seaweed.new_bucket()
    servers = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        servers.append(StoreServer(tmp_path / name, test_ca, s3=s3))
    ports = [with_metrics(s) for s in servers]
    try:
        for s in servers:
            s.start()
        account = servers[0].new_account()
        home = tmp_path / "home"
        home.mkdir()
        (home / "f").write_bytes(os.urandom(30000))
        run_once(client_config(tmp_path, servers[0], account, home))
        who = {"account": f"{account:08x}", "name": ""}
        seen = [scrape_until(p, lambda s: value(s, "boxbox_account_last_backup_timestamp_seconds", **who) > 0)
                for p in ports]
        for metric in ("boxbox_account_last_backup_timestamp_seconds", "boxbox_account_used_bytes"):
            assert value(seen[0], metric, **who) == value(seen[1], metric, **who) > 0
        assert value(seen[1], "boxbox_upload_size_bytes_count", kind="whole") == 0  # server two took no upload
        assert value(seen[0], "boxbox_upload_size_bytes_count", kind="whole") == 1
    finally:
        for s in servers:
            s.stop()
