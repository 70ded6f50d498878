"""The command line: role listing, --version, per-role help, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from boxbox.__main__ import ROLES, available_roles
from tests.conftest import boxbox_command, boxbox_env, run_boxbox


def test_help_lists_available_roles() -> None:
    out = run_boxbox("--help").stdout
    roles = available_roles()
    assert "config" in roles
    for name in roles:
        assert name in out
    for name in set(ROLES) - set(roles):
        assert f"    {name} " not in out


def test_version() -> None:
    from boxbox import __version__

    assert run_boxbox("--version").stdout.strip() == f"boxbox {__version__}"


@pytest.mark.parametrize("role", sorted(available_roles()))
def test_every_role_has_help(role: str) -> None:
    out = run_boxbox(role, "--help").stdout
    assert out.startswith(f"usage: boxbox {role}")


def test_unknown_role_exits_2_with_usage() -> None:
    proc = run_boxbox("no-such-role", exit_code=2)
    assert proc.stderr.startswith("usage: boxbox")
    assert "boxbox: argument ROLE: invalid choice: 'no-such-role'" in proc.stderr


def test_unknown_option_exits_2() -> None:
    proc = run_boxbox("config", "example", "client", "--bogus", exit_code=2)
    assert "unrecognized arguments: --bogus" in proc.stderr


def test_user_error_is_one_line_with_hint(tmp_path) -> None:
    proc = run_boxbox("config", "check", "client", str(tmp_path / "missing.conf"), exit_code=1)
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"boxbox: {tmp_path / 'missing.conf'}: config file not found",
                     "hint: `boxbox config example client` prints one"]


def test_help_does_not_import_cryptography() -> None:
    code = ("import sys; from boxbox.__main__ import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('cryptography' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=boxbox_env())
    assert out.stdout.strip().endswith("False"), out.stdout + out.stderr


def test_bug_gives_traceback_and_exit_2(monkeypatch, capsys) -> None:
    from boxbox import __main__ as entry
    from boxbox.roles import config as config_role

    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(config_role, "main", broken)
    assert entry.main(["config", "reference"]) == 2
    assert "RuntimeError: boom" in capsys.readouterr().err


def test_keyboard_interrupt_exits_130(monkeypatch, capsys) -> None:
    from boxbox import __main__ as entry
    from boxbox.roles import config as config_role

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(config_role, "main", interrupted)
    assert entry.main(["config", "reference"]) == 130
    assert capsys.readouterr().err == "boxbox: interrupted\n"

