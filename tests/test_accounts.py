"""`boxbox accounts`: the admin CLI on its own (no server running)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.conftest import run_boxbox


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    for i in range(3):
        (tmp_path / f"d{i}").mkdir()
    path = tmp_path / "server.conf"
    path.write_text(textwrap.dedent(f"""\
        [server]
        certificate = server.crt
        private_key = server.key
        ca_certificate = ca.crt
        account_database = {tmp_path / 'db' / 'accounts.db'}

        [discset main]
        directories = d0, d1, d2
        """))
    return path


def accounts(conf: Path, *args: str, exit_code: int = 0) -> str:
    proc = run_boxbox("accounts", "--config", str(conf), *args, exit_code=exit_code)
    return proc.stdout + proc.stderr


def test_lifecycle(conf: Path) -> None:
    assert "created on disc set main" in accounts(conf, "create", "0x2a", "--soft", "1G", "--hard", "1.5G",
                                                   "--name", "web server")
    info = json.loads(accounts(conf, "info", "2a", "--json"))
    assert info["account"] == "0000002a" and info["discset"] == "main" and info["enabled"] is True
    assert (info["soft_limit"], info["hard_limit"]) == (262144, 393216)
    assert info["count_directories"] == 1 and info["blocks_used"] > 0
    assert "0000002a  main     enabled" in accounts(conf, "list")
    accounts(conf, "setlimit", "2a", "--hard", "4G")
    accounts(conf, "name", "2a", "db server")
    accounts(conf, "disable", "2a")
    text = accounts(conf, "info", "2a")
    assert "db server" in text and "enabled:             no" in text and "4.0G" in text
    accounts(conf, "enable", "2a")
    assert json.loads(accounts(conf, "info", "2a", "--json"))["enabled"] is True
    assert "2 objects removed" in accounts(conf, "delete", "2a", "--yes")
    assert accounts(conf, "list") == ""
    # the disc set holds nothing of it any more
    assert [p for i in range(3) for p in (conf.parent / f"d{i}").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("args, message", [
    (("create", "7", "--soft", "2G", "--hard", "1G"), "above the hard limit"),
    (("create", "7", "--soft", "lots", "--hard", "1G"), "--soft: expected a size"),
    (("create", "7", "--soft", "1G", "--hard", "2G", "--discset", "nope"), "no disc set 'nope'"),
    (("create", "xyz", "--soft", "1G", "--hard", "2G"), "account number must be"),
    (("setlimit", "7"), "needs --soft, --hard or both"),
    (("delete", "7"), "add --yes"),
])
def test_usage_errors(conf: Path, args: tuple[str, ...], message: str) -> None:
    assert message in accounts(conf, *args, exit_code=2)


def test_unknown_account_and_duplicates(conf: Path) -> None:
    assert "not in the account database" in accounts(conf, "info", "99", exit_code=1)
    accounts(conf, "create", "8", "--soft", "1M", "--hard", "2M")
    assert "already exists" in accounts(conf, "create", "8", "--soft", "1M", "--hard", "2M", exit_code=2)
