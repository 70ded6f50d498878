"""Config table: parsing, typed values, errors naming file:section.key, generated examples."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from boxbox import config
from boxbox.errors import ConfigError
from tests.conftest import run_boxbox


@pytest.mark.parametrize("role", sorted(config.SCHEMAS))
def test_example_parses_back(role: str, tmp_path: Path) -> None:
    path = tmp_path / f"{role}.conf"
    path.write_text(config.example(role))
    cfg = config.load(path, role)
    for sec in config.SCHEMAS[role]:
        if sec.repeated:
            assert set(cfg.groups[sec.name]) == set(sec.example_names)
        else:
            assert set(cfg[sec.name]) == {k.name for k in sec.keys}


@pytest.mark.parametrize("role", sorted(config.SCHEMAS))
def test_example_command_output_parses(role: str, tmp_path: Path) -> None:
    out = run_boxbox("config", "example", role).stdout
    (tmp_path / "c.conf").write_text(out)
    assert run_boxbox("config", "check", role, str(tmp_path / "c.conf")).stdout.strip().endswith(": ok")


def _client(tmp_path: Path, extra: str = "", drop: str | None = None) -> Path:
    text = config.example("client")
    if drop:
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(f"{drop} ="))
    text = text.replace("[client]\n", "[client]\n" + extra, 1)
    path = tmp_path / "client.conf"
    path.write_text(text)
    return path


def test_unknown_key_names_file_section_key(tmp_path: Path) -> None:
    path = _client(tmp_path, "colour = blue\n")
    with pytest.raises(ConfigError, match=rf"^{path}:client\.colour: unknown key$"):
        config.load(path, "client")


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    path = _client(tmp_path, "minimum_file_age = soon\n")
    with pytest.raises(ConfigError) as e:
        config.load(path, "client")
    assert str(e.value) == f"{path}:client.minimum_file_age: expected a time like 30s, 15m, 6h or 1d, got 'soon'"


def test_missing_required_key(tmp_path: Path) -> None:
    path = _client(tmp_path, drop="keys_file")
    with pytest.raises(ConfigError, match=rf"^{path}:client\.keys_file: required key is missing$"):
        config.load(path, "client")


def test_unknown_section_and_missing_section(tmp_path: Path) -> None:
    path = tmp_path / "s.conf"
    path.write_text("[sever]\nport = 1\n")
    with pytest.raises(ConfigError, match=r"unknown section \[sever\]"):
        config.load(path, "server")
    path.write_text(config.example("server").split("# a set of directories")[0])
    with pytest.raises(ConfigError, match=r"required section \[discset NAME\] is missing"):
        config.load(path, "server")


def test_repeated_section_needs_a_name(tmp_path: Path) -> None:
    path = _client(tmp_path)
    path.write_text(path.read_text().replace("[location home]", "[location]"))
    with pytest.raises(ConfigError, match=r"should be written \[location NAME\]"):
        config.load(path, "client")


def test_syntax_error_is_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text("port = 3\n")
    with pytest.raises(ConfigError, match=str(path)):
        config.load(path, "server")


def test_relative_paths_resolve_against_config_dir(tmp_path: Path) -> None:
    cfg = config.load(_client(tmp_path), "client")
    assert cfg["client"]["keys_file"] == tmp_path / "keys.dat"


def test_sizes_and_times() -> None:
    assert config.parse_size("500M") == 500 << 20
    assert config.parse_size("2G") == 2 << 30
    assert config.parse_size("1T") == 1 << 40
    assert config.parse_size("4096") == 4096
    assert config.parse_size("10GiB") == 10 << 30
    assert config.parse_duration("30s") == 30
    assert config.parse_duration("6h") == 6 * 3600
    assert config.parse_duration("1d") == 86400
    for bad in ("", "M", "5X", "-1", "1.2.3"):
        with pytest.raises(ValueError):
            config.parse_size(bad)
    with pytest.raises(ValueError):
        config.parse_duration("1y")


@given(st.integers(min_value=0, max_value=1 << 50))
def test_size_format_round_trip(n: int) -> None:
    assert config.parse_size(config.format_size(n)) == n


@given(st.integers(min_value=0, max_value=10**8))
def test_duration_format_round_trip(s: int) -> None:
    assert config.parse_duration(config.format_duration(s)) == s


def test_reference_lists_every_key() -> None:
    ref = config.reference_markdown()
    for schema in config.SCHEMAS.values():
        for sec in schema:
            for key in sec.keys:
                assert f"| `{key.name}` |" in ref


def test_readme_reference_is_current() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    begin, end = "<!-- BEGIN CONFIG REFERENCE -->\n", "<!-- END CONFIG REFERENCE -->"
    block = readme[readme.index(begin) + len(begin) : readme.index(end)]
    assert block == config.reference_markdown(), "README config reference is stale: regenerate it with `boxbox config reference`"
