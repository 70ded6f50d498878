"""packaging/: systemd units, sysvinit and OpenRC scripts, example configs, install.sh.

The units are checked with `systemd-analyze verify` and every shell script with `shellcheck`
(both skip only when the tool is absent); install.sh runs under a temporary DESTDIR; the
sysvinit scripts start, reload and stop a stand-in daemon through start-stop-daemon and
through their portable fallback.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, SessionCA, free_port, run_boxbox

PACKAGING = ROOT / "packaging"
UNITS = sorted((PACKAGING / "systemd").glob("*.service"))
SHELL_SCRIPTS = sorted(
    [p for d in ("packaging", "build") for p in (ROOT / d).rglob("*")
     if p.is_file() and p.read_bytes()[:2] == b"#!"
     and p.read_bytes().split(b"\n", 1)[0].rsplit(b"/", 1)[-1] in (b"sh", b"openrc-run")],
    key=str)
is_root = os.geteuid() == 0

# The client scripts are the server scripts with these replacements: one place to change
# the logic, and a test that the two never drift apart.
SYSVINIT_CLIENT = [
    ("# Description:       The boxbox store server (bbstored): keeps the encrypted\n"
     "#                    backups that boxbox clients upload.\n",
     "# Description:       The boxbox backup client (bbackupd): encrypts changed\n"
     "#                    files and uploads them to a boxbox store.\n"),
    ("boxbox-server", "boxbox-client"),
    ("ROLE=server", "ROLE=client"),
    ("boxbox store server", "boxbox backup client"),
    (': "${BOXBOX_USER:=boxbox}"\n', '# root by default: a backup has to read every file\n: "${BOXBOX_USER:=root}"\n'),
    (': "${STATE_DIR:=/var/lib/boxbox}"', ': "${STATE_DIR:=/var/lib/boxbox-client}"'),
]
OPENRC_CLIENT = [
    ("# boxbox store server (bbstored).", "# boxbox backup client (bbackupd)."),
    ("# Runs as the dedicated user `boxbox` (the server refuses to run as root); the daemon\n",
     "# Runs as root by default: a backup has to read every file. The daemon\n"),
    ("boxbox-server", "boxbox-client"),
    ('"boxbox store server (encrypted backup store)"', '"boxbox backup client (encrypted, continuous backup)"'),
    (': "${BOXBOX_USER:=boxbox}"', ': "${BOXBOX_USER:=root}"'),
    ("/etc/boxbox/server.conf", "/etc/boxbox/client.conf"),
    (': "${BOXBOX_STATE_DIR:=/var/lib/boxbox}"', ': "${BOXBOX_STATE_DIR:=/var/lib/boxbox-client}"'),
    ('command_args="server ', 'command_args="client '),
    ("config example server", "config example client"),
    ('retry="TERM/30/KILL/5"', 'retry="TERM/60/KILL/5"'),
]


def _fake_exe(directory: Path) -> Path:
    exe = directory / "boxbox"
    exe.write_text("#!/bin/sh\necho fake boxbox\n")
    exe.chmod(0o755)
    return exe


# ------------------------------------------------------------------ systemd units
def _verify(unit: Path) -> list[str]:
    """`systemd-analyze verify` complaints about UNIT (it exits 0 even for unknown keys)."""
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          cwd=unit.parent)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if unit.name in ln or str(unit) in ln]
    if proc.returncode != 0:
        lines.append(f"exit {proc.returncode}: {proc.stderr.strip()}")
    return lines


def _unit_with_exe(unit_text: str, name: str, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists (verify checks that)."""
    exe = _fake_exe(tmp_path)
    out = tmp_path / "units" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(unit_text.replace("/usr/local/bin/boxbox", str(exe)))
    return out


needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed")


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    assert _verify(_unit_with_exe(unit.read_text(), unit.name, tmp_path)) == []


@needs_systemd_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    text = (PACKAGING / "systemd" / "boxbox-server.service").read_text()
    broken = text.replace("ProtectSystem=strict", "ProtectSystem=strictly").replace("Restart=on-failure",
                                                                                   "Restart=on-failur")
    complaints = _verify(_unit_with_exe(broken, "boxbox-server.service", tmp_path))
    assert any("strictly" in c for c in complaints) and any("on-failur" in c for c in complaints)


@pytest.mark.parametrize("role", ["server", "client"])
def test_units_follow_the_design(role: str) -> None:
    text = (PACKAGING / "systemd" / f"boxbox-{role}.service").read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    state = "boxbox" if role == "server" else "boxbox-client"
    assert settings["ExecStart"] == f"/usr/local/bin/boxbox {role} --config /etc/boxbox/{role}.conf --foreground"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["Environment"] == f"SHIV_ROOT=/var/lib/{state}/shiv"
    assert settings["StateDirectory"] == state
    assert settings["User"] == ("boxbox" if role == "server" else "root")
    for key, value in {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
                       "Restart": "on-failure"}.items():
        assert settings[key] == value, key
    if role == "server":
        assert settings["ReadWritePaths"] == "-/srv/boxbox"  # the example config's disc set


# ------------------------------------------------------------------ shell scripts
def test_every_script_is_found() -> None:
    names = {str(p.relative_to(ROOT)) for p in SHELL_SCRIPTS}
    assert {"build/shiv.sh", "build/arm-smoke.sh", "packaging/install.sh", "packaging/make-examples.sh",
            "packaging/sysvinit/boxbox-server", "packaging/sysvinit/boxbox-client",
            "packaging/openrc/boxbox-server", "packaging/openrc/boxbox-client"} <= names


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck(script: Path) -> None:
    proc = subprocess.run(["shellcheck", "--format=gcc", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_scripts_are_executable_posix_sh(script: Path) -> None:
    assert script.stat().st_mode & 0o111 == 0o111
    proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("kind,subs", [("sysvinit", SYSVINIT_CLIENT), ("openrc", OPENRC_CLIENT)])
def test_client_script_is_the_server_script_with_client_settings(kind: str, subs: list[tuple[str, str]]) -> None:
    text = (PACKAGING / kind / "boxbox-server").read_text()
    for old, new in subs:
        assert old in text, old
        text = text.replace(old, new)
    assert text == (PACKAGING / kind / "boxbox-client").read_text()


def test_sysvinit_lsb_header() -> None:
    for role in ("server", "client"):
        text = (PACKAGING / "sysvinit" / f"boxbox-{role}").read_text()
        header = text.split("### BEGIN INIT INFO\n", 1)[1].split("### END INIT INFO", 1)[0]
        fields = dict(re.findall(r"^# ([A-Za-z-]+):\s+(.*)$", header, re.M))
        assert fields["Provides"] == f"boxbox-{role}"
        assert fields["Default-Start"] == "2 3 4 5" and fields["Default-Stop"] == "0 1 6"
        assert "$network" in fields["Required-Start"] and "$remote_fs" in fields["Required-Start"]


# ------------------------------------------------------------------ sysvinit scripts, run
FAKE_DAEMON = """#!/bin/sh
trap 'echo "got HUP"' HUP
trap 'echo "got TERM"; exit 0' TERM
echo "started $* SHIV_ROOT=$SHIV_ROOT uid=$(id -u)"
while :; do sleep 1 & wait $! || true; done
"""


@pytest.fixture()
def init_sandbox():
    """A world-readable temp directory (the daemon user must reach it) with a stand-in daemon."""
    base = Path(tempfile.mkdtemp(prefix="boxbox-init-"))
    base.chmod(0o755)
    (base / "daemon").write_text(FAKE_DAEMON)
    (base / "daemon").chmod(0o755)
    (base / "server.conf").write_text("[server]\n")
    yield base
    pid_file = base / "run" / "boxbox-server.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass
    shutil.rmtree(base, ignore_errors=True)


def _init(base: Path, action: str, user: str, path: str, daemon: str = "daemon") -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "DAEMON": str(base / daemon), "CONFIG": str(base / "server.conf"),
           "PIDDIR": str(base / "run"), "LOGFILE": str(base / "log"), "STATE_DIR": str(base / "state"),
           "START_WAIT": "1", "STOP_TIMEOUT": "10", "BOXBOX_USER": user,
           "SHIV_ROOT": "/root/.shiv"}  # the administrator's own: must not reach the daemon
    return subprocess.run(["sh", str(PACKAGING / "sysvinit" / "boxbox-server"), action], capture_output=True,
                          text=True, env=env, timeout=60)


def _wait_for(path: Path, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}: {content!r}")


FULL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NO_SSD_PATH = "/usr/bin:/bin"  # start-stop-daemon lives in /sbin or /usr/sbin


@pytest.mark.skipif(not is_root, reason="starts a daemon as another user")
@pytest.mark.parametrize("path", [
    pytest.param(FULL_PATH, id="start-stop-daemon",
                 marks=pytest.mark.skipif(shutil.which("start-stop-daemon", path=FULL_PATH) is None,
                                          reason="no start-stop-daemon")),
    pytest.param(NO_SSD_PATH, id="portable-fallback"),
])
@pytest.mark.parametrize("user", ["nobody", "root"])
def test_sysvinit_start_status_reload_stop(init_sandbox: Path, path: str, user: str) -> None:
    if shutil.which("start-stop-daemon", path=NO_SSD_PATH) and path == NO_SSD_PATH:
        pytest.skip("start-stop-daemon is in /usr/bin or /bin here: cannot hide it")
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        pytest.skip(f"no user {user}")
    base = init_sandbox
    assert _init(base, "status", user, path).returncode == 3
    started = _init(base, "start", user, path)
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int((base / "run" / "boxbox-server.pid").read_text())
    log = _wait_for(base / "log", "started")
    # the design's command line, SHIV_ROOT in the state directory, as the chosen user
    assert f"started server --config {base}/server.conf --foreground SHIV_ROOT={base}/state/shiv uid={uid}" in log
    assert stat.S_IMODE((base / "state").stat().st_mode) == 0o700 and (base / "state").stat().st_uid == uid
    assert (base / "log").stat().st_uid == uid
    status = _init(base, "status", user, path)
    assert status.returncode == 0 and f"running (pid {pid})" in status.stdout
    again = _init(base, "start", user, path)
    assert again.returncode == 0 and "already running" in again.stdout
    assert int((base / "run" / "boxbox-server.pid").read_text()) == pid
    assert _init(base, "reload", user, path).returncode == 0
    _wait_for(base / "log", "got HUP")
    stopped = _init(base, "stop", user, path)
    assert stopped.returncode == 0, stopped.stderr
    _wait_for(base / "log", "got TERM")
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # the su parent of the fallback may take a moment to reap
            os.kill(pid, 0)
            time.sleep(0.1)
    assert not (base / "run" / "boxbox-server.pid").exists()
    assert _init(base, "status", user, path).returncode == 3
    assert _init(base, "reload", user, path).returncode == 1


@pytest.mark.skipif(not is_root, reason="chowns the state directory")
def test_sysvinit_reports_a_daemon_that_dies_at_once(init_sandbox: Path) -> None:
    (init_sandbox / "broken").write_text("#!/bin/sh\necho 'boxbox: /etc/boxbox/server.conf:server.port: expected "
                                         "a whole number' >&2\nexit 1\n")
    (init_sandbox / "broken").chmod(0o755)
    proc = _init(init_sandbox, "start", "root", FULL_PATH, daemon="broken")
    assert proc.returncode == 1
    assert "expected a whole number" in proc.stderr  # the log's tail, not only "see the log"
    assert proc.stderr.strip().endswith(f"did not start; see {init_sandbox}/log")


def test_sysvinit_refuses_a_missing_config(tmp_path: Path) -> None:
    env = {"PATH": FULL_PATH, "DAEMON": str(_fake_exe(tmp_path)), "CONFIG": str(tmp_path / "nope.conf")}
    proc = subprocess.run(["sh", str(PACKAGING / "sysvinit" / "boxbox-server"), "start"], capture_output=True,
                          text=True, env=env, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"boxbox-server: {tmp_path}/nope.conf is missing "
                                   "(`boxbox config example server` prints one)")
    usage = subprocess.run(["sh", str(PACKAGING / "sysvinit" / "boxbox-server"), "frobnicate"],
                           capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "usage:" in usage.stderr


@pytest.mark.e2e
@pytest.mark.skipif(not is_root, reason="the init script chowns its directories")
def test_sysvinit_runs_the_real_server(tmp_path: Path, test_ca: SessionCA) -> None:
    """The init script's command line, SIGHUP and SIGTERM against `boxbox server` itself."""
    port = free_port()
    for i in range(3):
        (tmp_path / f"d{i}").mkdir()
    conf = tmp_path / "server.conf"
    conf.write_text(f"""[server]
listen = 127.0.0.1
port = {port}
certificate = {test_ca.server_dir}/server.crt
private_key = {test_ca.server_dir}/server.key
ca_certificate = {test_ca.ca_cert}
account_database = {tmp_path}/accounts.db

[discset 0]
directories = {tmp_path}/d0
    {tmp_path}/d1
    {tmp_path}/d2
""")
    run_boxbox("accounts", "--config", str(conf), "create", "1", "--soft", "10M", "--hard", "20M")
    # as root in a test, so the daemon needs --allow-root; the source tree stands in for the zipapp
    daemon = tmp_path / "boxbox"
    daemon.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m boxbox "$@" --allow-root\n')
    daemon.chmod(0o755)
    env = {"PATH": FULL_PATH, "DAEMON": str(daemon), "CONFIG": str(conf), "PIDDIR": str(tmp_path / "run"),
           "LOGFILE": str(tmp_path / "log"), "STATE_DIR": str(tmp_path / "state"), "START_WAIT": "2",
           "BOXBOX_USER": "root"}

    def init(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(PACKAGING / "sysvinit" / "boxbox-server"), action], capture_output=True,
                              text=True, env=env, timeout=60)

    started = init("start")
    assert started.returncode == 0, started.stdout + started.stderr + (tmp_path / "log").read_text()
    try:
        _wait_for(tmp_path / "log", f"listening on 127.0.0.1 port {port}", timeout=30)
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
        assert init("reload").returncode == 0
        _wait_for(tmp_path / "log", "reloaded the CRL and the account database (1 accounts)", timeout=30)
    finally:
        stopped = init("stop")
    assert stopped.returncode == 0, stopped.stderr
    _wait_for(tmp_path / "log", "stopped")
    assert init("status").returncode == 3


# ------------------------------------------------------------------ example configs
def test_examples_are_the_generators_output() -> None:
    proc = subprocess.run(["sh", str(PACKAGING / "make-examples.sh"), "--check"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_examples_check_catches_a_stale_file(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "boxbox", tmp_path / "boxbox", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PACKAGING, tmp_path / "packaging")
    stale = tmp_path / "packaging" / "examples" / "client.conf"
    stale.write_text(stale.read_text().replace("# port = 2201", "# port = 2202"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(["sh", str(tmp_path / "packaging" / "make-examples.sh"), "--check"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("boxbox: packaging/make-examples.sh: packaging/examples/client.conf differ")


@pytest.mark.parametrize("role", ["server", "client"])
def test_examples_parse(role: str) -> None:
    path = PACKAGING / "examples" / f"{role}.conf"
    assert run_boxbox("config", "check", role, str(path)).stdout.strip() == f"{path}: ok"


def test_examples_use_the_installed_layout() -> None:
    from boxbox import config

    server = config.load(PACKAGING / "examples" / "server.conf", "server")
    assert server["server"]["account_database"] == Path("/var/lib/boxbox/accounts.db")  # StateDirectory
    assert server["server"]["private_key"] == Path("/etc/boxbox/server.key")
    assert server.groups["discset"]["0"]["directories"] == ["/srv/boxbox/0"]  # ReadWritePaths
    client = config.load(PACKAGING / "examples" / "client.conf", "client")
    assert client["client"]["data_directory"] == Path("/var/lib/boxbox-client")
    assert client["client"]["keys_file"] == Path("/etc/boxbox/keys.dat")


# ------------------------------------------------------------------ install.sh
def _install(*args: str, exit_code: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["sh", str(PACKAGING / "install.sh"), *args], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "DESTDIR"})
    assert proc.returncode == exit_code, proc.stdout + proc.stderr
    if exit_code:
        assert proc.stderr.splitlines()[-1 if exit_code == 1 else 0].startswith("boxbox: packaging/install.sh: ")
    return proc


def _claims(stdout: str) -> dict[str, tuple[int, str | None]]:
    """install.sh's "installed PATH MODE [OWNER]" lines: path -> (mode, owner)."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("installed "):
            parts = line.split()
            out[parts[1]] = (int(parts[2], 8), parts[3] if len(parts) > 3 else None)
    return out


def _tree(root: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = "/" + str(p.relative_to(root)) + ("/" if p.is_dir() else "")
        out[rel] = (stat.S_IMODE(st.st_mode), f"{pwd.getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name}")
    return out


def _check_install(dest: Path, proc: subprocess.CompletedProcess[str]) -> dict[str, tuple[int, str]]:
    """Exactly what it says: every claimed path with its mode (and owner), every other path a plain parent."""
    claims = _claims(proc.stdout)
    tree = _tree(dest)
    for path, (mode, owner) in claims.items():
        assert path in tree, f"{path} claimed but missing"
        assert tree[path][0] == mode, f"{path}: mode {tree[path][0]:o}, claimed {mode:o}"
        if owner is not None:
            assert tree[path][1] == owner, f"{path}: owner {tree[path][1]}, claimed {owner}"
    for path, (mode, _) in tree.items():
        if path not in claims:
            assert path.endswith("/") and any(c.startswith(path) for c in claims), f"{path} made but not claimed"
            assert mode == 0o755, f"parent {path} has mode {mode:o}"
    return tree


def test_install_server_sysvinit(tmp_path: Path) -> None:
    exe = _fake_exe(tmp_path)
    dest = tmp_path / "root"
    proc = _install("--role", "server", "--init", "sysvinit", "--exe", str(exe), f"DESTDIR={dest}")
    assert "not creating 'boxbox' under DESTDIR" in proc.stdout
    tree = _check_install(dest, proc)
    assert {p: m for p, (m, _) in tree.items() if p in _claims(proc.stdout)} == {
        "/usr/local/bin/boxbox": 0o755,
        "/etc/boxbox/": 0o750,
        "/etc/boxbox/server.conf": 0o640,
        "/var/lib/boxbox/": 0o700,
        "/srv/boxbox/": 0o750,
        "/srv/boxbox/0/": 0o700,
        "/etc/init.d/boxbox-server": 0o755,
    }
    assert (dest / "usr/local/bin/boxbox").read_bytes() == exe.read_bytes()
    assert (dest / "etc/boxbox/server.conf").read_text() == (PACKAGING / "examples/server.conf").read_text()
    assert (dest / "etc/init.d/boxbox-server").read_text() == (PACKAGING / "sysvinit/boxbox-server").read_text()


def test_install_keeps_an_existing_config(tmp_path: Path) -> None:
    exe = _fake_exe(tmp_path)
    dest = tmp_path / "root"
    _install("--role", "client", "--init", "none", "--exe", str(exe), f"DESTDIR={dest}")
    conf = dest / "etc/boxbox/client.conf"
    conf.write_text("# mine\n")
    exe.write_text("#!/bin/sh\necho newer\n")
    proc = _install("--role", "client", "--init", "none", "--exe", str(exe), f"DESTDIR={dest}")
    assert conf.read_text() == "# mine\n" and "kept /etc/boxbox/client.conf" in proc.stdout
    assert (dest / "usr/local/bin/boxbox").read_text() == "#!/bin/sh\necho newer\n"  # the executable is updated
    assert not list(dest.rglob("*.tmp.*"))


@pytest.mark.parametrize("init,path", [("systemd", "/etc/systemd/system/boxbox-client.service"),
                                       ("sysvinit", "/etc/init.d/boxbox-client"),
                                       ("openrc", "/etc/init.d/boxbox-client")])
def test_install_client_runs_as_root_by_default(tmp_path: Path, init: str, path: str) -> None:
    dest = tmp_path / "root"
    proc = _install("--role", "client", "--init", init, "--exe", str(_fake_exe(tmp_path)), f"DESTDIR={dest}")
    tree = _check_install(dest, proc)
    assert tree["/var/lib/boxbox-client/"][0] == 0o700 and "/srv/boxbox/" not in tree
    source = PACKAGING / ("systemd/boxbox-client.service" if init == "systemd" else f"{init}/boxbox-client")
    assert (dest / path.lstrip("/")).read_text() == source.read_text()


@pytest.mark.parametrize("init", ["systemd", "sysvinit", "openrc"])
def test_install_with_another_user(tmp_path: Path, init: str) -> None:
    dest = tmp_path / "root"
    proc = _install("--role", "client", "--user", "backupper", "--init", init, "--exe", str(_fake_exe(tmp_path)),
                    f"DESTDIR={dest}")
    _check_install(dest, proc)
    if init == "systemd":
        text = (dest / "etc/systemd/system/boxbox-client.service").read_text()
        assert "\nUser=backupper\nGroup=backupper\n" in text
        assert "\nAmbientCapabilities=CAP_DAC_READ_SEARCH\n" in text  # reads everything without being root
    else:
        text = (dest / "etc/init.d/boxbox-client").read_text()
        assert '\n: "${BOXBOX_USER:=backupper}"\n' in text and "BOXBOX_USER:=root" not in text


@needs_systemd_analyze
def test_installed_units_verify(tmp_path: Path) -> None:
    for role, user in (("server", "storeuser"), ("client", "backupper")):
        dest = tmp_path / role
        _install("--role", role, "--user", user, "--init", "systemd", "--exe", str(_fake_exe(tmp_path)),
                 f"DESTDIR={dest}")
        unit = dest / f"etc/systemd/system/boxbox-{role}.service"
        assert _verify(_unit_with_exe(unit.read_text(), unit.name, tmp_path)) == []


@pytest.mark.skipif(not is_root, reason="owners are set only by root")
def test_install_sets_owners_as_root(tmp_path: Path) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    dest = tmp_path / "root"
    proc = _install("--role", "server", "--user", "nobody", "--init", "systemd", "--exe", str(_fake_exe(tmp_path)),
                    f"DESTDIR={dest}")
    tree = _check_install(dest, proc)
    assert tree["/etc/boxbox/"] == (0o750, f"root:{group}")  # the daemon reads its config through the group
    assert tree["/etc/boxbox/server.conf"] == (0o640, f"root:{group}")
    assert tree["/var/lib/boxbox/"] == (0o700, f"nobody:{group}")
    assert tree["/srv/boxbox/0/"] == (0o700, f"nobody:{group}")
    assert tree["/usr/local/bin/boxbox"][1].startswith("root:")
    assert all(owner is not None for _, owner in _claims(proc.stdout).values())


@pytest.mark.parametrize("args,message", [
    (["--role", "storage"], "unknown role 'storage' (expected server or client)"),
    (["--role", "server", "--user", "root"], "the server refuses to run as root"),
    (["--init", "upstart"], "unknown init system 'upstart'"),
    (["--user", "a b"], "'a b' is not a user name"),
])
def test_install_mistakes(tmp_path: Path, args: list[str], message: str) -> None:
    proc = _install(*args, "--exe", str(_fake_exe(tmp_path)), f"DESTDIR={tmp_path / 'root'}", exit_code=1)
    assert message in proc.stderr
    assert not (tmp_path / "root").exists()


def test_install_needs_the_executable(tmp_path: Path) -> None:
    proc = _install("--exe", str(tmp_path / "missing"), f"DESTDIR={tmp_path / 'root'}", exit_code=1)
    assert "run build/shiv.sh first" in proc.stderr
    assert "unknown argument '--frob'" in _install("--frob", exit_code=2).stderr


# ------------------------------------------------------------------ ARM
@pytest.mark.slow
@pytest.mark.skipif(not is_root, reason="build/arm-smoke.sh needs root (chroot)")
def test_arm_smoke() -> None:
    """Minutes, the network (Debian mirror, PyPI) and root: run with -m slow."""
    proc = subprocess.run(["sh", str(ROOT / "build" / "arm-smoke.sh")], capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "all passed: aarch64 armv7l" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not is_root, reason="packaging/service-smoke.sh needs root (chroot)")
def test_service_smoke() -> None:
    """install.sh for real in a fresh Debian system, then the server through its init script."""
    proc = subprocess.run(["sh", str(PACKAGING / "service-smoke.sh")], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "runs as boxbox" in proc.stdout and proc.stdout.rstrip().endswith("passed")
