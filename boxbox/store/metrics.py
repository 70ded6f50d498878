"""The server's metrics: a small thread-safe registry and the Prometheus text exposition format.

No client library (run time is the standard library plus `cryptography`); the format is a
HELP and a TYPE line per family and one line per series
(https://prometheus.io/docs/instrumenting/exposition_formats/). The families the server
keeps while it runs are declared at the bottom, so a hook elsewhere is one call. Labels
carry account numbers, account names, disc set names and results — never a file name or
a path.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from boxbox.errors import ProgrammingError

#: Content type of the text format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Upload size buckets, bytes: small files, typical documents, photos, big media.
UPLOAD_BUCKETS = (4096.0, 65536.0, 1048576.0, 16777216.0, 268435456.0)

Labels = tuple[tuple[str, str], ...]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1 << 53:
        return str(int(v))
    return repr(float(v))


class Family:
    """One metric name: its type, help, label names and current values (thread-safe)."""

    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labels)
        self._lock = threading.Lock()
        self._values: dict[Labels, float] = {}

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.labelnames):
            raise ProgrammingError(f"metric {self.name}: labels {sorted(labels)}, expected {list(self.labelnames)}")
        return tuple((n, str(labels[n])) for n in self.labelnames)

    def samples(self) -> Iterator[tuple[str, Labels, float]]:
        with self._lock:
            items = sorted(self._values.items())
        for labels, value in items:
            yield self.name, labels, value

    def value(self, **labels: str) -> float:
        """The current value of one series (0 if never set): for tests and for derived metrics."""
        with self._lock:
            return self._values.get(self._key(labels), 0.0)


class Counter(Family):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ProgrammingError(f"counter {self.name} cannot go down (by {amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(Family):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(Family):
    """Counts of observations at or below each bucket bound, their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Iterable[str] = (),
                 buckets: Iterable[float] = UPLOAD_BUCKETS) -> None:
        super().__init__(name, help, labels)
        self.buckets = (*sorted(buckets), math.inf)
        self._series: dict[Labels, list[float]] = {}  # bucket counts..., sum, count

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def samples(self) -> Iterator[tuple[str, Labels, float]]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for labels, series in items:
            for bound, n in zip(self.buckets, series):
                yield f"{self.name}_bucket", (*labels, ("le", format_value(bound))), n
            yield f"{self.name}_sum", labels, series[-2]
            yield f"{self.name}_count", labels, series[-1]

    def value(self, **labels: str) -> float:
        """The number of observations of one series."""
        with self._lock:
            series = self._series.get(self._key(labels))
            return series[-1] if series else 0.0


Collector = Callable[[], Iterable[Family]]


class Registry:
    """Families kept while the process runs, plus collectors that build fresh ones at each scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, Family] = {}
        self._collectors: list[Collector] = []

    def register(self, family: Family) -> Family:
        with self._lock:
            if family.name in self._families:
                raise ProgrammingError(f"metric {family.name} registered twice")
            self._families[family.name] = family
        return family

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Counter:
        return self.register(Counter(name, help, labels))  # type: ignore[return-value]

    def gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> Gauge:
        return self.register(Gauge(name, help, labels))  # type: ignore[return-value]

    def histogram(self, name: str, help: str, labels: Iterable[str] = (),
                  buckets: Iterable[float] = UPLOAD_BUCKETS) -> Histogram:
        return self.register(Histogram(name, help, labels, buckets))  # type: ignore[return-value]

    def add_collector(self, collector: Collector) -> None:
        with self._lock:
            self._collectors.append(collector)

    def remove_collector(self, collector: Collector) -> None:
        with self._lock:
            if collector in self._collectors:
                self._collectors.remove(collector)

    def render(self) -> str:
        """Every family in the text exposition format."""
        with self._lock:
            families = list(self._families.values())
            collectors = list(self._collectors)
        for collect in collectors:
            families.extend(collect())
        out: list[str] = []
        for family in families:
            out.append(f"# HELP {family.name} {_escape_help(family.help)}")
            out.append(f"# TYPE {family.name} {family.kind}")
            for name, labels, value in family.samples():
                text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                out.append(f"{name}{{{text}}} {format_value(value)}" if text else f"{name} {format_value(value)}")
        return "\n".join(out) + "\n"


def process_families() -> list[Family]:
    """Resident memory, open descriptors and CPU time of this process (Linux /proc; skipped elsewhere)."""
    families: list[Family] = []
    cpu = Counter("process_cpu_seconds_total", "user and system CPU time of the server process")
    t = os.times()
    cpu.inc(t.user + t.system)
    families.append(cpu)
    try:
        with open("/proc/self/statm", "rb") as f:
            rss_pages = int(f.read().split()[1])
        rss = Gauge("process_resident_memory_bytes", "resident set size of the server process")
        rss.set(rss_pages * os.sysconf("SC_PAGE_SIZE"))
        families.append(rss)
        fds = Gauge("process_open_fds", "open file descriptors of the server process")
        fds.set(len(os.listdir("/proc/self/fd")))
        families.append(fds)
    except (OSError, ValueError, IndexError):
        pass
    return families


# ---------------------------------------------------------------- the server's families
REGISTRY = Registry()
REGISTRY.add_collector(process_families)

SESSIONS = REGISTRY.counter("boxbox_sessions_total", "client sessions ended, by result "
                            "(finished, closed, error, network_error, internal_error; refused: over max_connections)", ("result",))
RECEIVED = REGISTRY.counter("boxbox_received_bytes_total", "bytes received from clients (counted at session end)")
SENT = REGISTRY.counter("boxbox_sent_bytes_total", "bytes sent to clients (counted at session end)")
UPLOADS = REGISTRY.histogram("boxbox_upload_size_bytes", "size of each stored upload stream, by kind (whole, diff)",
                             ("kind",))
HOUSEKEEPING_RUNS = REGISTRY.counter("boxbox_housekeeping_runs_total", "housekeeping passes over one account, "
                                     "by result (done, skipped, failed)", ("result",))
HOUSEKEEPING_SECONDS = REGISTRY.counter("boxbox_housekeeping_seconds_total", "time spent in housekeeping passes")
HOUSEKEEPING_FREED = REGISTRY.counter("boxbox_housekeeping_freed_bytes_total",
                                      "space freed by housekeeping (old versions and deleted files removed)")
HOUSEKEEPING_LAST = REGISTRY.gauge("boxbox_housekeeping_last_run_timestamp_seconds",
                                   "when the last housekeeping round over every account ended")
HOUSEKEEPING_LAST_SECONDS = REGISTRY.gauge("boxbox_housekeeping_last_run_duration_seconds",
                                           "how long the last housekeeping round over every account took")
SCRUB_OBJECTS = REGISTRY.counter("boxbox_scrub_objects_total", "objects whose every stripe the scheduled scrub verified")
SCRUB_REPAIRED = REGISTRY.counter("boxbox_scrub_repaired_total", "objects the scheduled scrub rebuilt")
SCRUB_UNRECOVERABLE = REGISTRY.gauge("boxbox_scrub_unrecoverable_objects",
                                     "objects the last scrub round found unrecoverable (two stripes bad)")
SCRUB_FAILED = REGISTRY.counter("boxbox_scrub_failures_total", "account scrubs that stopped on an error")
SCRUB_LAST = REGISTRY.gauge("boxbox_scrub_last_run_timestamp_seconds", "when the last scrub round ended")


def record_session(result: str, received: int, sent: int) -> None:
    SESSIONS.inc(result=result)
    RECEIVED.inc(received)
    SENT.inc(sent)


def record_housekeeping(ok: bool, skipped: bool, seconds: float, freed_blocks: int, block_size: int = 4096) -> None:
    HOUSEKEEPING_RUNS.inc(result="failed" if not ok else "skipped" if skipped else "done")
    HOUSEKEEPING_SECONDS.inc(seconds)
    HOUSEKEEPING_FREED.inc(freed_blocks * block_size)


def record_round(kind: str, started: float, unrecoverable: int = 0) -> None:
    """A housekeeping or scrub round over every account ended."""
    now = time.time()
    if kind == "housekeeping":
        HOUSEKEEPING_LAST.set(now)
        HOUSEKEEPING_LAST_SECONDS.set(now - started)
    else:
        SCRUB_LAST.set(now)
        SCRUB_UNRECOVERABLE.set(unrecoverable)
