"""`boxbox quickstart`: the pieces from the source tree, then the whole thing from the built executable.

The end-to-end test runs `dist/boxbox quickstart DIR` (the session's zipapp, or BOXBOX_EXE)
in a temporary HOME with nothing of the checkout on sys.path, then runs the commands it
printed: the restore must give back the tree (contents, modes, symlinks), a second
quickstart must back up a change, and the stop command must end the server.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from boxbox import config
from boxbox.errors import BoxboxError, ConfigError, UsageError
from boxbox.quickstart import home as qs
from boxbox.quickstart import launch
from boxbox.roles.quickstart import keys_box, progress_line
from tests.conftest import run_boxbox
from tests.test_zipapp import zipapp  # noqa: F401  (the session's build of dist/boxbox)


# ---------------------------------------------------------------- pieces
def test_limits_are_a_third_of_the_free_space_soft_below_hard() -> None:
    soft, hard = qs.size_limits(3 * 10**9)  # 3 GB free: the store may fill 1.5 GB of disc = 1 GB counted
    assert hard == 10**9 // 4096
    assert soft == int(hard * 0.9)


def test_too_little_free_space_is_refused_with_the_numbers() -> None:
    with pytest.raises(BoxboxError, match=r"not enough free space for a store: 100 MiB free, quickstart needs 192 MiB"):
        qs.size_limits(100 << 20)
    assert qs.size_limits(192 << 20)[1] == (64 << 20) // 4096


def test_server_config_is_the_commented_table_with_quickstart_values(tmp_path: Path) -> None:
    home = qs.Home(tmp_path)
    text = qs.server_config_text(home, 41234)
    cfg = config.parse_text(text, "server")
    s = cfg["server"]
    assert (s["listen"], s["port"], s["pid_file"]) == (["127.0.0.1"], 41234, tmp_path / "server.pid")
    assert s["crl"] == tmp_path / "ca" / "crl.pem"
    assert cfg.groups["discset"]["0"]["directories"] == [str(d) for d in home.discs]  # three: RAID on
    # every key of the table is there, with its help line, set or commented out
    for key in config.SERVER[0].keys:
        assert f"# {key.help} ({key.type.name})\n" in text
        assert re.search(rf"(?m)^(# )?{key.name} =", text), key.name


def test_client_config_has_one_location_per_dir_and_excludes_the_home(tmp_path: Path) -> None:
    home = qs.Home(tmp_path / "user" / ".boxbox")
    docs, user = tmp_path / "docs", tmp_path / "user"
    cfg = config.parse_text(qs.client_config_text(home, 5000, {"docs": docs, "user": user}), "client")
    c = cfg["client"]
    assert (c["server"], c["port"], c["account"], c["automatic_backup"]) == ("127.0.0.1", 5000, "1", False)
    assert c["keys_file"] == home.keys_file
    locations = cfg.groups["location"]
    assert {n: loc["path"] for n, loc in locations.items()} == {"docs": docs, "user": user}
    assert locations["docs"]["exclude_dirs"] == []
    assert locations["user"]["exclude_dirs"] == [str(home.root)]  # or the store would back itself up


def test_a_later_dir_is_appended_and_edits_are_kept(tmp_path: Path) -> None:
    home = qs.make_home(tmp_path / "h")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    step, locations = qs.ensure_client_config(home, 5000, [a])
    assert step.new and locations == {"a": a}
    with open(home.client_conf, "a") as f:
        f.write("# my own note\n")
    step, locations = qs.ensure_client_config(home, 5000, [])
    assert not step.new and locations == {"a": a}
    step, locations = qs.ensure_client_config(home, 5000, [b, a])
    assert step.new and locations == {"a": a, "b": b} and "(added b)" in step.detail
    assert "# my own note\n" in home.client_conf.read_text()
    assert set(config.load(home.client_conf, "client").groups["location"]) == {"a", "b"}


def test_location_names_are_section_safe_and_unique() -> None:
    assert qs.location_name(Path("/srv/My Photos (2024)"), set()) == "My_Photos_2024"
    assert qs.location_name(Path("/"), set()) == "root"
    assert qs.location_name(Path("/x/docs"), {"docs", "docs-2"}) == "docs-3"


def test_set_port_changes_only_the_port_line(tmp_path: Path) -> None:
    home = qs.Home(tmp_path)
    path = tmp_path / "server.conf"
    path.write_text(qs.server_config_text(home, 1111))
    qs.set_port(path, 2222)
    assert config.load(path, "server")["server"]["port"] == 2222
    assert path.read_text().replace("port = 2222", "port = 1111") == qs.server_config_text(home, 1111)
    path.write_text("[server]\n")
    with pytest.raises(ConfigError, match="expected one `port = N` line, found 0"):
        qs.set_port(path, 3333)


def test_a_taken_port_moves_both_configs_to_a_free_one(tmp_path: Path) -> None:
    from boxbox.roles.quickstart import _choose_port

    home = qs.make_home(tmp_path / "h")
    (tmp_path / "d").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        qs.ensure_server_config(home, port)
        qs.ensure_client_config(home, port, [tmp_path / "d"])
        new, moved = _choose_port(home)
    assert moved and new != port
    assert config.load(home.server_conf, "server")["server"]["port"] == new
    assert config.load(home.client_conf, "client")["client"]["port"] == new
    assert _choose_port(home) == (new, False)  # free now: kept


def test_directories_are_checked(tmp_path: Path) -> None:
    home = qs.make_home(tmp_path / "h")
    with pytest.raises(UsageError, match="nope: not a directory"):
        qs.check_directories(home, [tmp_path / "nope"])
    inner = home.root / "store"
    inner.mkdir()
    with pytest.raises(UsageError, match="inside the quickstart home"):
        qs.check_directories(home, [inner])
    assert qs.check_directories(home, [tmp_path, tmp_path / "." ]) == [tmp_path.resolve()]


def test_refusals_are_one_line(tmp_path: Path) -> None:
    proc = run_boxbox("quickstart", str(tmp_path / "missing"), "--home", str(tmp_path / "h"), exit_code=2)
    assert proc.stderr == f"boxbox: {tmp_path / 'missing'}: not a directory\n"
    (tmp_path / "file").write_text("x")
    proc = run_boxbox("quickstart", str(tmp_path), "--home", str(tmp_path / "file"), exit_code=2)
    assert proc.stderr == f"boxbox: --home {tmp_path / 'file'}: not a directory\n"


def test_invocation_names_the_executable_the_user_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert launch.invocation("/src/boxbox/__main__.py") == [sys.executable, "-m", "boxbox"]
    exe = tmp_path / "bin" / "boxbox"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.chdir(tmp_path)
    assert launch.invocation("bin/boxbox") == [str(exe)]  # relative: made absolute, so it works from anywhere
    monkeypatch.setenv("PATH", str(exe.parent))
    assert launch.invocation(str(exe)) == ["boxbox"]  # on PATH: the short form
    exe.chmod(0o644)
    assert launch.invocation("bin/boxbox") == [sys.executable, str(exe)]


def test_a_stale_or_foreign_pid_file_is_not_a_server(tmp_path: Path) -> None:
    pid_file, conf = tmp_path / "server.pid", tmp_path / "server.conf"
    assert launch.running_server(pid_file, conf) is None
    pid_file.write_text("garbage\n")
    assert launch.running_server(pid_file, conf) is None
    pid_file.write_text(f"{os.getpid()}\n")  # alive, but pytest, not `boxbox server --config conf`
    assert launch.running_server(pid_file, conf) is None


def test_a_server_that_dies_at_start_is_reported_with_its_last_words(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    dies = [sys.executable, "-c", "import sys; print('cannot read server.key', file=sys.stderr); sys.exit(3)"]
    with pytest.raises(BoxboxError, match=r"^the store server exited with status 3: cannot read server.key$") as e:
        launch.start_server(dies, tmp_path / "server.conf", log, ssl.create_default_context(), launch.free_port(),
                            allow_root=False)
    assert e.value.hint == f"its log: {log}"


def test_a_server_that_never_answers_is_given_up_on_and_stopped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    silent = [sys.executable, "-c", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
              "time.sleep(60)"]
    started = time.monotonic()
    with pytest.raises(BoxboxError, match=r"did not answer TLS on 127.0.0.1 port \d+ within 2 s; stopped it"):
        launch.start_server(silent, tmp_path / "server.conf", tmp_path / "server.log", ssl.create_default_context(),
                            launch.free_port(), allow_root=False, timeout=2.0)
    assert time.monotonic() - started < 8
    assert not _is_running(int(pid_file.read_text()))  # stopped, not left behind


def test_keys_box_is_a_box_naming_the_file() -> None:
    lines = keys_box(Path("/home/me/.boxbox/keys.dat")).splitlines()
    assert lines[0] == lines[-1] and set(lines[0]) == {"+", "-"}
    assert {len(ln) for ln in lines} == {len(lines[0])}
    assert any(ln.strip("| ") == "/home/me/.boxbox/keys.dat" for ln in lines)


def test_progress_line_is_redrawn_from_the_live_run_and_erased_at_the_end() -> None:
    import io
    from types import SimpleNamespace

    from boxbox.roles.quickstart import REDRAW, _ProgressLine

    run = SimpleNamespace(session=None)
    out = io.StringIO()
    with _ProgressLine(out, run):  # type: ignore[arg-type]
        time.sleep(REDRAW * 2.5)
        run.session = SimpleNamespace(stats=SimpleNamespace(files_uploaded=7, file_bytes=2_000_000), bytes_sent=900)
        time.sleep(REDRAW * 2.5)
    text = out.getvalue()
    assert re.match(r"\rlooking for changes\.\.\. \d+ s", text), text
    assert re.search(r"\rbacking up: 7 files, 2\.0 MB read, 900 B sent, \d+ s", text), text
    assert re.search(r"\r +\r$", text)  # the line is blanked, the cursor back at its start


def test_progress_line() -> None:
    assert progress_line(None, 0, 0, 3.2) == "looking for changes... 3 s"
    assert progress_line(12, 1_500_000, 800_000, 75) == "backing up: 12 files, 1.5 MB read, 800.0 kB sent, 1 min 15 s"


# ---------------------------------------------------------------- end to end, from the built executable
@pytest.fixture
def exe(request: pytest.FixtureRequest) -> Path:
    """BOXBOX_EXE when the suite runs against a build, else the session's zipapp."""
    given = os.environ.get("BOXBOX_EXE")
    return Path(given) if given else request.getfixturevalue("zipapp")


def _tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Path -> (kind, mode, sha256 or link target, mtime in s) of everything below ROOT."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest(),
                            int(st.st_mtime))
    return out


def _make_tree(root: Path) -> None:
    (root / "docs" / "deep" / "er").mkdir(parents=True)
    (root / "docs" / "notes.txt").write_text("first notes\n")
    (root / "docs" / "deep" / "er" / "random.bin").write_bytes(os.urandom(200_000))
    (root / "empty").write_bytes(b"")
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "script.sh").chmod(0o755)
    (root / "secret").write_text("mine\n")
    (root / "secret").chmod(0o600)
    (root / "private").mkdir(mode=0o700)
    (root / "private" / "x").write_text("x")
    (root / "link-to-notes").symlink_to("docs/notes.txt")
    (root / "dangling").symlink_to("nowhere")
    (root / "link-to-dir").symlink_to("docs")


def _command(stdout: str, after: str) -> str:
    """The command printed on the line after the line that contains AFTER."""
    lines = stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if after in ln)
    return lines[at + 1].strip()


def _is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has stopped; only its parent's reaping is missing


@pytest.mark.e2e
def test_quickstart_from_the_built_executable(exe: Path, tmp_path: Path) -> None:
    user_home = tmp_path / "home"
    data = tmp_path / "data"
    work = tmp_path / "work"
    for d in (user_home, data, work):
        d.mkdir()
    _make_tree(data)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BOXBOX_EXE")}
    env.update(HOME=str(user_home), SHIV_ROOT=str(tmp_path / "shiv"))

    def sh(line: str, cwd: Path = work) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(line, shell=True, capture_output=True, text=True, cwd=cwd, env=env, timeout=180)
        assert proc.returncode == 0, f"{line}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    boxbox_home = user_home / ".boxbox"
    pid_file = boxbox_home / "server.pid"
    try:
        first = sh(f"{shlex.quote(str(exe))} quickstart {shlex.quote(str(data))}")
        out = first.stdout
        assert f"everything lives in {boxbox_home}\n" in out
        assert re.search(r"made  account 00000001 +soft limit \S+ \S+, hard limit \S+ \S+\n", out)
        assert "backed up 9 files (" in out, out  # 6 files, 3 symlinks
        assert ("--allow-root" in out) == (os.geteuid() == 0)
        assert "COPY THE KEYS FILE SOMEWHERE SAFE" in out and f"|      {boxbox_home / 'keys.dat'}" in out
        pid = int(pid_file.read_text())
        assert _is_running(pid)

        # the printed commands call this same executable, and work from another directory
        restore = _command(out, "restore into a new directory")
        assert restore.startswith(f"{exe} query --config {boxbox_home / 'client.conf'} restore data ")
        sh(restore, cwd=work)
        assert _tree(work / "restored-data") == _tree(data)

        (data / "docs" / "notes.txt").write_text("second notes, longer than the first\n")
        (data / "new file").write_bytes(b"new\n")
        time.sleep(1.1)  # past the client's same-second window for mtimes
        second = sh(f"{shlex.quote(str(exe))} quickstart")  # reuses everything, backs up the change
        assert "made " not in second.stdout, second.stdout
        assert f"kept  store server        pid {pid}," in second.stdout
        assert "backed up 2 files (" in second.stdout, second.stdout
        sh(_command(second.stdout, "restore into a new directory"), cwd=tmp_path)
        assert _tree(tmp_path / "restored-data") == _tree(data)

        sh(_command(second.stdout, "back up again"))  # exits 0 only when the run succeeded

        sh(_command(second.stdout, "stop the store server"))
        deadline = time.monotonic() + 20
        while (_is_running(pid) or pid_file.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _is_running(pid) and not pid_file.exists()
    finally:
        if pid_file.exists():
            pid = int(pid_file.read_text())
            if _is_running(pid):
                os.kill(pid, signal.SIGTERM)
