"""The quickstart home (`~/.boxbox`): every file of a one-machine store and client, made once.

Each `ensure_*` function makes its piece when it is missing and otherwise keeps it, so a
second `boxbox quickstart` reuses everything (and never makes a second keys file, which
would orphan every backup made with the first). Each returns a `Step` for the report.

    HOME/ca/            the CA (ca.key stays here)
    HOME/server/        server.key, server.crt (127.0.0.1 and localhost), ca.crt
    HOME/client/        client.key, client.crt (account 1), ca.crt
    HOME/keys.dat       the keys file: without it nothing can be restored
    HOME/store/0,1,2    the disc set: three directories, so RAID is on
    HOME/accounts.db    the account database
    HOME/server.conf    HOME/client.conf   generated from the config table, commented
    HOME/server.pid     HOME/server.log    the background store server
    HOME/client-state/  the client's directory records and id map
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from boxbox import config
from boxbox.atomic import write_atomic
from boxbox.errors import BoxboxError, ConfigError, ProgrammingError, UsageError
from boxbox.store.info import BLOCK_SIZE

ACCOUNT = 1
ACCOUNT_NAME = "quickstart"
SERVER_ADDRESS = "127.0.0.1"
SERVER_NAMES = ("localhost", SERVER_ADDRESS)

#: a RAID file is two half-size stripes and a half-size parity stripe: 1.5 bytes of disc per byte
RAID_COST = 1.5
#: the store may fill this share of the free space; the rest stays for the machine's own use
SHARE_OF_FREE = 0.5
#: soft limit as a share of the hard one: housekeeping trims old versions above it
SOFT_SHARE = 0.9
#: below this the store could not hold even a small home directory: refuse rather than fail later
MIN_HARD_BYTES = 64 << 20

CONFIG_HEADER = """\
# Written by `boxbox quickstart`. Edit freely: quickstart keeps this file, and on later runs
# changes only `port` (when the old port is taken) and adds a [location NAME] for a new DIR.
"""


class Step(NamedTuple):
    """One line of the report: what, where or how much, and whether this run made it."""

    what: str
    detail: str
    new: bool


@dataclass(frozen=True)
class Home:
    """Where each quickstart file lives."""

    root: Path

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def server_dir(self) -> Path:
        return self.root / "server"

    @property
    def client_dir(self) -> Path:
        return self.root / "client"

    @property
    def keys_file(self) -> Path:
        return self.root / "keys.dat"

    @property
    def discs(self) -> tuple[Path, Path, Path]:
        return (self.root / "store" / "0", self.root / "store" / "1", self.root / "store" / "2")

    @property
    def account_database(self) -> Path:
        return self.root / "accounts.db"

    @property
    def server_conf(self) -> Path:
        return self.root / "server.conf"

    @property
    def client_conf(self) -> Path:
        return self.root / "client.conf"

    @property
    def pid_file(self) -> Path:
        return self.root / "server.pid"

    @property
    def server_log(self) -> Path:
        return self.root / "server.log"

    @property
    def state_dir(self) -> Path:
        return self.root / "client-state"


def make_home(root: Path) -> Home:
    """The home directory, private (it holds the CA key and the keys file)."""
    root = root.expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise UsageError(f"--home {root}: not a directory")
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise BoxboxError(f"--home {root}: cannot create it: {e.strerror}") from None
    return Home(root)


# ---------------------------------------------------------------- certificates and keys
def ensure_ca(home: Home) -> Step:
    from boxbox.ca import authority

    cert = home.ca_dir / authority.CA_CERT
    if cert.exists():
        return Step("CA", str(cert), False)
    return Step("CA", str(authority.init_ca(home.ca_dir)), True)


def ensure_server_certificate(home: Home) -> Step:
    from boxbox.ca import authority

    names = ", ".join(SERVER_NAMES)
    cert = home.server_dir / authority.SERVER_CERT
    if cert.exists():
        return Step("server certificate", f"{cert} ({names})", False)
    signed = authority.sign_server(home.ca_dir, SERVER_NAMES[0], home.server_dir, alt_names=SERVER_NAMES[1:])
    return Step("server certificate", f"{signed.cert} ({names})", True)


def ensure_client_certificate(home: Home) -> Step:
    from boxbox.ca import authority

    cert = home.client_dir / authority.CLIENT_CERT
    if cert.exists():
        return Step("client certificate", f"{cert} (account {ACCOUNT:x})", False)
    signed = authority.sign_client(home.ca_dir, ACCOUNT, home.client_dir)
    return Step("client certificate", f"{signed.cert} (account {ACCOUNT:x})", True)


def ensure_keys(home: Home) -> Step:
    """The keys file: made once, never replaced (every backup is sealed with it)."""
    from boxbox.crypto.keys import create_keys_file, load_keys

    path = home.keys_file
    if path.exists() or path.is_symlink():
        return Step("keys file", f"{path} (fingerprint {load_keys(path).fingerprint})", False)
    return Step("keys file", f"{path} (fingerprint {create_keys_file(path).fingerprint})", True)


# ---------------------------------------------------------------- store
def ensure_discs(home: Home) -> Step:
    new = False
    for disc in home.discs:
        if not disc.is_dir():
            disc.mkdir(mode=0o700, parents=True)
            new = True
    where = f"{home.root / 'store'}/{{0,1,2}}"
    return Step("disc set", f"{where} (RAID: two stripes + parity)", new)


def size_limits(free_bytes: int) -> tuple[int, int]:
    """Soft and hard limits in blocks for a store with FREE_BYTES of disc left.

    The store may take SHARE_OF_FREE of the free space; RAID writes RAID_COST bytes per byte
    counted, so the hard limit is free * 0.5 / 1.5, a third of the free space.
    """
    hard_bytes = int(free_bytes * SHARE_OF_FREE / RAID_COST)
    if hard_bytes < MIN_HARD_BYTES:
        need = int(MIN_HARD_BYTES * RAID_COST / SHARE_OF_FREE)
        raise BoxboxError(f"not enough free space for a store: {free_bytes >> 20} MiB free, "
                          f"quickstart needs {need >> 20} MiB", hint="free some space or pass --home on another disc")
    hard = hard_bytes // BLOCK_SIZE
    return int(hard * SOFT_SHARE), hard


def ensure_account(home: Home) -> tuple[Step, str]:
    """Account 1 on disc set 0, sized from the free space; returns the step and a line about the sizing."""
    from boxbox.restore.progress import human_bytes
    from boxbox.store.account import Store

    store = Store.from_config(config.load(home.server_conf, "server"))
    if ACCOUNT in store.database.accounts():
        info = store.read_info(ACCOUNT)
        detail = (f"soft limit {human_bytes(info.soft_limit * BLOCK_SIZE)}, hard limit "
                  f"{human_bytes(info.hard_limit * BLOCK_SIZE)}, {human_bytes(info.blocks_used * BLOCK_SIZE)} used")
        return Step(f"account {ACCOUNT:08x}", detail, False), ""
    free = shutil.disk_usage(home.root).free
    soft, hard = size_limits(free)
    store.create_account(ACCOUNT, soft, hard, "0", ACCOUNT_NAME)
    detail = f"soft limit {human_bytes(soft * BLOCK_SIZE)}, hard limit {human_bytes(hard * BLOCK_SIZE)}"
    sizing = (f"sized from the {human_bytes(free)} free at {home.root}: the store may fill half of it,\n"
              f"and RAID writes {RAID_COST} bytes per byte, so the hard limit is a third")
    return Step(f"account {ACCOUNT:08x}", detail, True), sizing


# ---------------------------------------------------------------- configs
def server_config_text(home: Home, port: int) -> str:
    from boxbox.ca import authority

    server = {
        "listen": [SERVER_ADDRESS],
        "port": port,
        "certificate": home.server_dir / authority.SERVER_CERT,
        "private_key": home.server_dir / authority.SERVER_KEY,
        "ca_certificate": home.ca_dir / authority.CA_CERT,
        "crl": home.ca_dir / authority.CRL,
        "account_database": home.account_database,
        "pid_file": home.pid_file,
    }
    return CONFIG_HEADER + config.example("server", {"server": server, "discset 0": {"directories": [str(d) for d in home.discs]}})


def client_config_text(home: Home, port: int, locations: dict[str, Path]) -> str:
    from boxbox.ca import authority

    client = {
        "server": SERVER_ADDRESS,
        "port": port,
        "account": f"{ACCOUNT:x}",
        "certificate": home.client_dir / authority.CLIENT_CERT,
        "private_key": home.client_dir / authority.CLIENT_KEY,
        "ca_certificate": home.ca_dir / authority.CA_CERT,
        "keys_file": home.keys_file,
        "data_directory": home.state_dir,
        "automatic_backup": False,  # snapshot mode: quickstart and `client --once` back up when asked
    }
    head, _ = _split_location(config.example("client", {"client": client}))
    return CONFIG_HEADER + head + "\n".join(location_block(home, n, p) for n, p in locations.items())


def _split_location(text: str) -> tuple[str, str]:
    """The example client config cut before its one `[location NAME]` section."""
    section = next(s for s in config.CLIENT if s.name == "location")
    marker = f"# {section.help}\n[location {section.example_names[0]}]\n"
    at = text.find(marker)
    if at < 0:
        raise ProgrammingError("the example client config has no [location] section where quickstart expects it")
    return text[:at], text[at:].replace(marker, f"# {section.help}\n[location {{name}}]\n", 1)


def location_block(home: Home, name: str, path: Path) -> str:
    """A commented `[location NAME]` section; a home inside PATH is excluded (or the store would back itself up)."""
    values: dict[str, Any] = {"path": path}
    if home.root.is_relative_to(path):
        values["exclude_dirs"] = [str(home.root)]
    _, block = _split_location(config.example("client", {"location home": values}))
    return block.replace("{name}", name, 1)


def location_name(path: Path, taken: set[str]) -> str:
    """A section name from the directory's name: letters, digits, `.`, `_`, `-`; unique among TAKEN."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name).strip("_.") or "root"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def check_directories(home: Home, dirs: list[Path]) -> list[Path]:
    """DIRs resolved; each an existing directory outside the home."""
    out: list[Path] = []
    for d in dirs:
        full = d.expanduser().resolve()
        if not full.is_dir():
            raise UsageError(f"{d}: not a directory")
        if full.is_relative_to(home.root):
            raise UsageError(f"{d}: inside the quickstart home {home.root}; back up something else")
        if full not in out:
            out.append(full)
    return out


def ensure_server_config(home: Home, port: int) -> Step:
    path = home.server_conf
    if path.exists():
        config.load(path, "server")
        return Step("server config", str(path), False)
    text = server_config_text(home, port)
    config.parse_text(text, "server", source=str(path))  # a table change that breaks it fails here, not later
    write_atomic(path, text.encode(), mode=0o600)
    return Step("server config", str(path), True)


def configured_locations(home: Home) -> dict[str, Path]:
    """[location NAME] path of each location in the client config (none when there is no config)."""
    if not home.client_conf.exists():
        return {}
    cfg = config.load(home.client_conf, "client")
    return {name: Path(loc["path"]) for name, loc in cfg.groups.get("location", {}).items()}


def ensure_client_config(home: Home, port: int, dirs: list[Path]) -> tuple[Step, dict[str, Path]]:
    """Write the client config, or add a [location] for each DIR not yet in it; returns every location."""
    path = home.client_conf
    existing = configured_locations(home)
    known = {p.resolve() for p in existing.values()}
    added: dict[str, Path] = {}
    for d in dirs:
        if d not in known:
            added[location_name(d, set(existing) | set(added))] = d
            known.add(d)
    if not existing and not added:
        raise ConfigError(f"{path}: no [location NAME] section: nothing to back up", hint="name a DIR to back up")
    if path.exists():
        if added:
            text = path.read_text(encoding="utf-8").rstrip("\n") + "\n\n"
            text += "\n".join(location_block(home, n, p) for n, p in added.items())
            config.parse_text(text, "client", source=str(path))
            write_atomic(path, text.encode(), mode=0o600)
    else:
        text = client_config_text(home, port, added)
        config.parse_text(text, "client", source=str(path))
        write_atomic(path, text.encode(), mode=0o600)
    locations = {**existing, **added}
    listing = ", ".join(f"{n} = {p}" for n, p in locations.items())
    note = f" (added {', '.join(added)})" if added and existing else ""
    return Step("client config", f"{path}: {listing}{note}", bool(added)), locations


def set_port(path: Path, port: int) -> None:
    """Change the one `port = N` line of a quickstart config (comments and edits kept)."""
    text = path.read_text(encoding="utf-8")
    new, count = re.subn(r"(?m)^port\s*=.*$", f"port = {port}", text)
    if count != 1:
        raise ConfigError(f"{path}: expected one `port = N` line, found {count}",
                          hint=f"set port = {port} in it by hand and run quickstart again")
    write_atomic(path, new.encode(), mode=0o600)
