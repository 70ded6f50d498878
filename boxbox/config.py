"""INI configuration: every key declared once (type, default, help), validated with clear errors.

The table below is the single source of truth: parsing, `boxbox config example ROLE` and the
README's configuration reference are all generated from it. Errors name `file:section.key`.
Relative paths are resolved against the directory of the config file.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple

from boxbox.errors import ConfigError

REQUIRED = object()  # default marker: the key must be given

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpb]?)(?:i?b)?\s*$", re.IGNORECASE)
_TIME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'500M' -> bytes (binary units: k, M, G, T, P); a plain number is bytes."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"expected a size like 4096, 500M, 2G or 1T, got {text!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(text: str) -> float:
    """'30s', '15m', '6h', '1d', '2w' -> seconds; a plain number is seconds."""
    m = _TIME_RE.match(text)
    if not m:
        raise ValueError(f"expected a time like 30s, 15m, 6h or 1d, got {text!r}")
    return float(m.group(1)) * _TIME_UNITS[m.group(2).lower()]


def format_size(n: int) -> str:
    for unit in ("T", "G", "M", "k"):
        if n >= _SIZE_UNITS[unit.lower()] and n % _SIZE_UNITS[unit.lower()] == 0:
            return f"{n // _SIZE_UNITS[unit.lower()]}{unit}"
    return str(n)


def format_duration(s: float) -> str:
    s_int = int(s)
    if s_int != s:
        return f"{s}s"
    for unit in ("w", "d", "h", "m"):
        if s_int and s_int % _TIME_UNITS[unit] == 0:
            return f"{s_int // _TIME_UNITS[unit]}{unit}"
    return f"{s_int}s"


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "yes", "true", "on"):
        return True
    if low in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"expected yes or no, got {text!r}")


def parse_int(text: str) -> int:
    try:
        return int(text.strip(), 0)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None


def parse_list(text: str) -> list[str]:
    """One item per line (or comma-separated on one line); blank items dropped."""
    items: list[str] = []
    for line in text.splitlines():
        parts = [line] if "\n" in text else line.split(",")
        items.extend(p.strip() for p in parts if p.strip())
    return items


class Type(NamedTuple):
    """A value type: name shown in help, parser from text, formatter back to text."""

    name: str
    parse: Callable[[str], Any]
    format: Callable[[Any], str] = str


STR = Type("text", lambda s: s.strip())
INT = Type("integer", parse_int)
BOOL = Type("yes/no", parse_bool, lambda b: "yes" if b else "no")
SIZE = Type("size", parse_size, format_size)
DURATION = Type("time", parse_duration, format_duration)
def parse_path(text: str) -> Path:
    try:
        return Path(text.strip()).expanduser()
    except RuntimeError:  # `~nosuchuser/...`: Path.expanduser cannot find that home
        raise ValueError(f"cannot expand {text.strip()!r}: no such user") from None


PATH = Type("path", parse_path)
LIST = Type("list", parse_list, lambda v: "\n".join(v))
# one regex per line: a comma is regex syntax (`a{1,3}`), never a separator here
REGEX_LIST = Type("regex list", lambda s: [ln.strip() for ln in s.splitlines() if ln.strip()], lambda v: "\n".join(v))


def choice(*values: str) -> Type:
    def parse(text: str) -> str:
        t = text.strip().lower()
        if t not in values:
            raise ValueError(f"expected one of {', '.join(values)}, got {text!r}")
        return t

    return Type("|".join(values), parse)


class Key(NamedTuple):
    name: str
    type: Type
    default: Any
    help: str
    example: Any = None  # value used in the generated example when there is no default


class Section(NamedTuple):
    """A section; `repeated` sections are written `[kind NAME]` and may appear many times."""

    name: str
    help: str
    keys: tuple[Key, ...]
    repeated: bool = False
    required: bool = True
    example_names: tuple[str, ...] = ()
    #: another section that, when present, makes this one optional
    unless: str = ""

    def key(self, name: str) -> Key | None:
        return next((k for k in self.keys if k.name == name), None)


LOG_KEYS = (
    Key("log", choice("stderr", "syslog"), "stderr", "where a daemon logs: stderr (systemd journal) or syslog"),
    Key("log_level", choice("debug", "info", "warning", "error"), "info", "least severe message logged"),
)

SERVER = (
    Section(
        "server",
        "the store daemon",
        (
            Key("listen", LIST, ["0.0.0.0"], "addresses to listen on, one per line or comma-separated"),
            Key("port", INT, 2201, "TCP port"),
            Key("certificate", PATH, REQUIRED, "server certificate (from `boxbox ca sign-server`)", "server.crt"),
            Key("private_key", PATH, REQUIRED, "server private key", "server.key"),
            Key("ca_certificate", PATH, REQUIRED, "CA certificate that signs client certificates", "ca.crt"),
            Key("crl", PATH, None, "certificate revocation list from `boxbox ca revoke` (reloaded on SIGHUP)"),
            Key("account_database", PATH, REQUIRED, "account database file", "accounts.db"),
            Key("pid_file", PATH, None, "where the daemon writes its process id"),
            Key("housekeeping_interval", DURATION, 900.0, "how often old and deleted files are trimmed"),
            Key("scrub_interval", DURATION, 0.0, "how often every RAID stripe is verified and rebuilt (0: never)"),
            Key("idle_timeout", DURATION, 900.0, "drop a client connection silent for this long"),
            Key("read_timeout", DURATION, 120.0, "drop a client that stalls this long inside a message or upload"),
            Key("max_connections", INT, 100, "connections served at once; more are refused"),
            Key("metrics", BOOL, False, "serve GET /metrics (Prometheus) and GET /health over HTTP on metrics_listen"),
            Key("metrics_listen", STR, "127.0.0.1:9201", "ADDRESS:PORT for /metrics and /health ([::1]:9201 for IPv6)"),
            *LOG_KEYS,
        ),
    ),
    Section(
        "discset",
        "a set of directories holding RAID files: three (RAID) or one (no RAID)",
        (
            Key("directories", LIST, REQUIRED, "three directories, ideally on three discs, or one", ["/srv/boxbox/0"]),
            Key("block_size", SIZE, 4096, "RAID block size, a power of two"),
        ),
        repeated=True,
        example_names=("0",),
        unless="s3",
    ),
    Section(
        "s3",
        "an S3-compatible bucket holding accounts; several servers may share it (docs/STORE.md)",
        (
            Key("endpoint", STR, REQUIRED, "https://host[:port] of the S3 service", "https://s3.example.net"),
            Key("bucket", STR, REQUIRED, "bucket name (it must exist)", "boxbox"),
            Key("prefix", STR, "boxbox", "key prefix inside the bucket: accounts, account list and leases live under it"),
            Key("region", STR, "us-east-1", "region used in request signatures"),
            Key("access_key", STR, REQUIRED, "S3 access key id", "BOXBOXEXAMPLE"),
            Key("secret_key_file", PATH, REQUIRED, "file holding the S3 secret key, mode 0600", "s3-secret.key"),
            Key("ca_certificate", PATH, None, "CA certificate for the endpoint (default: the system's)"),
            Key("addressing", choice("path", "virtual"), "path", "path: host/bucket/key; virtual: bucket.host/key"),
            Key("allow_http", BOOL, False, "allow a plain-http endpoint (a trusted network only)"),
            Key("lease_time", DURATION, 60.0, "an account lease lasts this long unrenewed (renewed every third)"),
            Key("clock_skew", DURATION, 10.0, "largest clock difference between the servers sharing the bucket"),
        ),
        repeated=True,
        required=False,
        example_names=(),  # not in the example: a store uses disc sets unless configured otherwise
    ),
)

CLIENT = (
    Section(
        "client",
        "the backup daemon",
        (
            Key("server", STR, REQUIRED, "store server host name (must match its certificate); several, comma-separated "
                "(HOST or HOST:PORT), are tried in order when one cannot be reached", "backup.example.net"),
            Key("port", INT, 2201, "store server TCP port"),
            Key("account", STR, REQUIRED, "account number on the store, in hex", "1"),
            Key("certificate", PATH, REQUIRED, "client certificate (from `boxbox ca sign-client`)", "client.crt"),
            Key("private_key", PATH, REQUIRED, "client private key", "client.key"),
            Key("ca_certificate", PATH, REQUIRED, "CA certificate that signed the server certificate", "ca.crt"),
            Key("keys_file", PATH, REQUIRED, "1 KiB keys file: without it nothing can be restored", "keys.dat"),
            Key("data_directory", PATH, REQUIRED, "client state (directory records, id map)", "state"),
            Key("command_socket", PATH, None, "UNIX socket for `boxbox ctl` (default: in data_directory)"),
            Key("pid_file", PATH, None, "where the daemon writes its process id"),
            Key("cipher", choice("aes-256-gcm", "chacha20-poly1305"), "aes-256-gcm",
                "block cipher; chacha20-poly1305 is faster on ARM cores without AES instructions"),
            Key("automatic_backup", BOOL, True, "yes: lazy continuous mode; no: snapshot mode (`boxbox ctl sync`)"),
            Key("update_store_interval", DURATION, 3600.0, "time between scans in lazy mode (plus jitter)"),
            Key("minimum_file_age", DURATION, 6 * 3600.0, "upload a changed file only once it is this old"),
            Key("max_upload_wait", DURATION, 24 * 3600.0, "upload a file that keeps changing after this long"),
            Key("max_file_time_in_future", DURATION, 2 * 86400.0, "mtimes further ahead than this are treated as now"),
            Key("file_tracking_size_threshold", SIZE, 65536, "files at least this big are tracked by inode for renames"),
            Key("diffing_upload_size_threshold", SIZE, 8192, "files at least this big are uploaded as a delta"),
            Key("maximum_diffing_time", DURATION, 120.0, "give up searching for a delta after this long"),
            Key("keep_alive_time", DURATION, 120.0, "send keep-alives this often during long work"),
            Key("delete_redundant_locations_after", DURATION, 172800.0, "delete a location removed from config after"),
            Key("max_upload_rate", SIZE, 0, "bytes per second, 0 for no limit"),
            Key("notify_script", PATH, None, "run with an event name (backup-ok, store-full, ...)"),
            Key("notify_repeats", BOOL, False, "run notify_script again for the same error event on every run"),
            Key("sync_allow_script", PATH, None, "prints 'now' or a delay in seconds before a run"),
            Key("metrics_textfile", PATH, None, "node_exporter textfile written after each run"),
            *LOG_KEYS,
        ),
    ),
    Section(
        "location",
        "a directory tree to back up; one section per location, `[location NAME]`",
        (
            Key("path", PATH, REQUIRED, "the directory to back up", "/home"),
            Key("exclude_files", LIST, [], "file paths to exclude"),
            Key("exclude_files_regex", REGEX_LIST, [], "regexes of file paths to exclude"),
            Key("exclude_dirs", LIST, [], "directory paths to exclude"),
            Key("exclude_dirs_regex", REGEX_LIST, [], "regexes of directory paths to exclude"),
            Key("always_include_files", LIST, [], "file paths included even when excluded"),
            Key("always_include_files_regex", REGEX_LIST, [], "regexes of file paths always included"),
            Key("always_include_dirs", LIST, [], "directory paths included even when excluded"),
            Key("always_include_dirs_regex", REGEX_LIST, [], "regexes of directory paths always included"),
        ),
        repeated=True,
        example_names=("home",),
    ),
)

SCHEMAS: dict[str, tuple[Section, ...]] = {"server": SERVER, "client": CLIENT}


class Config:
    """Typed settings of one file: `cfg["server"]["port"]`, `cfg.groups["location"]["home"]["path"]`.

    A plain class, like the NamedTuples above, rather than dataclasses: a client run that finds
    nothing changed then never imports `dataclasses` (and `inspect`, `ast`, `dis` with it).
    """

    __slots__ = ("path", "sections", "groups")

    def __init__(self, path: Path, sections: dict[str, dict[str, Any]] | None = None,
                 groups: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
        self.path = path
        self.sections: dict[str, dict[str, Any]] = {} if sections is None else sections
        self.groups: dict[str, dict[str, dict[str, Any]]] = {} if groups is None else groups

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.sections[section]


def _resolve(value: Any, base: Path) -> Any:
    if isinstance(value, Path) and not value.is_absolute():
        return base / value
    return value


def parse_text(text: str, role: str, source: str = "<config>", base: Path | None = None) -> Config:
    """Parse INI `text` against the `role` schema; `source` names the file in errors."""
    schema = SCHEMAS[role]
    base = base if base is not None else Path.cwd()
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00none", strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise ConfigError(f"{source}: {str(e).splitlines()[0]}") from None
    cfg = Config(path=Path(source))
    by_name = {s.name: s for s in schema}
    for raw in parser.sections():
        kind, _, inst = raw.partition(" ")
        inst = inst.strip()
        sec = by_name.get(kind)
        if sec is None:
            known = ", ".join(f"[{s.name}{' NAME' if s.repeated else ''}]" for s in schema)
            raise ConfigError(f"{source}: unknown section [{raw}]", hint=f"sections for {role}: {known}")
        if sec.repeated != bool(inst):
            form = f"[{kind} NAME]" if sec.repeated else f"[{kind}]"
            raise ConfigError(f"{source}: section [{raw}] should be written {form}")
        where = f"{source}:{raw}"
        values: dict[str, Any] = {}
        for name, text_value in parser.items(raw):
            key = sec.key(name)
            if key is None:
                raise ConfigError(f"{where}.{name}: unknown key", hint=f"keys in [{kind}]: {', '.join(k.name for k in sec.keys)}")
            try:
                values[name] = _resolve(key.type.parse(text_value), base)
            except ValueError as e:
                raise ConfigError(f"{where}.{name}: {e}") from None
        for key in sec.keys:
            if key.name not in values:
                if key.default is REQUIRED:
                    raise ConfigError(f"{where}.{key.name}: required key is missing")
                values[key.name] = _resolve(key.default, base)
        if sec.repeated:
            cfg.groups.setdefault(kind, {})[inst] = values
        else:
            cfg.sections[kind] = values
    for sec in schema:
        present = sec.name in (cfg.groups if sec.repeated else cfg.sections)
        if not present and sec.required and not (sec.unless and (cfg.groups.get(sec.unless) or sec.unless in cfg.sections)):
            form = f"[{sec.name} NAME]" if sec.repeated else f"[{sec.name}]"
            raise ConfigError(f"{source}: required section {form} is missing",
                              hint=f"or give a [{sec.unless} NAME] section" if sec.unless else None)
        if sec.repeated:
            cfg.groups.setdefault(sec.name, {})
    return cfg


def load(path: str | Path, role: str) -> Config:
    """Read and validate a config file for `role`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found", hint=f"`boxbox config example {role}` prints one") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config file: {e}") from None
    cfg = parse_text(text, role, source=str(path), base=path.resolve().parent)
    cfg.path = path
    return cfg


def _format_value(key: Key, value: Any) -> str:
    text = key.type.format(value)
    return text.replace("\n", "\n    ")


def example(role: str, overrides: dict[str, dict[str, Any]] | None = None) -> str:
    """A complete, commented config for `role`; `overrides[section][key]` replaces values."""
    overrides = overrides or {}
    out = [f"# boxbox {role} configuration (generated by `boxbox config example {role}`)", ""]
    for sec in SCHEMAS[role]:
        names = sec.example_names if sec.repeated else ("",)
        for inst in names:
            header = f"{sec.name} {inst}" if inst else sec.name
            out.append(f"# {sec.help}")
            out.append(f"[{header}]")
            given = overrides.get(header, {})
            for key in sec.keys:
                out.append(f"# {key.help} ({key.type.name})")
                if key.name in given:
                    out.append(f"{key.name} = {_format_value(key, given[key.name])}")
                elif key.default is REQUIRED:
                    out.append(f"{key.name} = {_format_value(key, key.example)}")
                elif key.default is None or key.default == []:
                    out.append(f"# {key.name} =")
                else:
                    out.append(f"# {key.name} = {_format_value(key, key.default)}")
            out.append("")
    return "\n".join(out)


def reference_markdown() -> str:
    """The configuration reference for the README, generated from the table."""
    out: list[str] = []
    for role, schema in SCHEMAS.items():
        for sec in schema:
            title = f"[{sec.name} NAME]" if sec.repeated else f"[{sec.name}]"
            out += [f"#### {role}: `{title}` — {sec.help}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
            for k in sec.keys:
                if k.default is REQUIRED:
                    default = "**required**"
                elif k.default is None or k.default == []:
                    default = "—"
                else:
                    default = "`" + k.type.format(k.default).replace("\n", ", ") + "`"
                out.append(f"| `{k.name}` | {k.type.name} | {default} | {k.help} |")
            out.append("")
    return "\n".join(out)
