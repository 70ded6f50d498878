"""Exclude / always-include rules: the documented order, config errors, automatic excludes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from boxbox.backup.rules import KEYS, Rules
from boxbox.config import example, parse_text
from boxbox.errors import ConfigError


def rules(**kw: list[str]) -> Rules:
    return Rules("/home", **kw)  # type: ignore[arg-type]


def test_no_rules_exclude_nothing_and_are_inactive() -> None:
    r = rules()
    assert not r.active
    assert not r.excluded("/home/a", False) and not r.excluded("/home/a", True)


def test_exact_paths_apply_to_their_kind_only() -> None:
    r = rules(exclude_files=["/home/a/f"], exclude_dirs=["/home/a/d"])
    assert r.excluded("/home/a/f", False) and not r.excluded("/home/a/f", True)
    assert r.excluded("/home/a/d", True) and not r.excluded("/home/a/d", False)
    assert not r.excluded("/home/a/f2", False) and not r.excluded("/home/a/d/x", True)


def test_exact_paths_are_normalised_and_relative_ones_are_inside_the_location() -> None:
    r = rules(exclude_dirs=["/home//guest/", "tmp"])
    assert r.excluded("/home/guest", True) and r.excluded("/home/tmp", True)


def test_regex_searches_the_full_path() -> None:
    r = rules(exclude_files_regex=[r"\.(mp3|MP3)$"], exclude_dirs_regex=["^/home/[^/]+/tmp$"])
    assert r.excluded("/home/u/song.mp3", False) and not r.excluded("/home/u/song.mp3.txt", False)
    assert r.excluded("/home/u/tmp", True) and not r.excluded("/home/u/x/tmp", True)
    assert not r.excluded("/home/u/tmp", False)  # a file named tmp is not a directory


def test_always_include_takes_back_what_an_exclude_caught() -> None:
    r = rules(exclude_files_regex=[r"\.mp3$"], always_include_files=["/home/u/speech.mp3"],
              exclude_dirs_regex=["cache"], always_include_dirs_regex=["keep"])
    assert r.excluded("/home/u/song.mp3", False)
    assert not r.excluded("/home/u/speech.mp3", False)
    assert r.excluded("/home/u/.cache", True) and not r.excluded("/home/u/cache-keep", True)


def test_always_include_alone_changes_nothing() -> None:
    r = rules(always_include_files_regex=[".*"], always_include_dirs=["/home/x"])
    assert not r.active and not r.excluded("/home/anything", False)


def test_root_is_never_excluded() -> None:
    r = rules(exclude_dirs_regex=["home"], exclude_dirs=["/home"])
    assert not r.excluded("/home", True) and r.excluded("/home/homework", True)


def test_forced_excludes_beat_always_include(tmp_path: Path) -> None:
    (tmp_path / "keys.dat").write_bytes(b"k")
    (tmp_path / "state").mkdir()
    r = Rules(tmp_path, always_include_files_regex=[".*"], always_include_dirs_regex=[".*"],
              forced_excludes=[tmp_path / "keys.dat", tmp_path / "state", tmp_path / "not-yet"])
    assert r.active
    assert r.excluded(f"{tmp_path}/keys.dat", False) and r.excluded(f"{tmp_path}/state", True)
    assert r.excluded(f"{tmp_path}/not-yet", True)
    # by inode too: the same file reached through another spelling of the path
    st = os.stat(tmp_path / "keys.dat")
    assert r.excluded(f"{tmp_path}/elsewhere", False, (st.st_dev, st.st_ino))
    assert not r.excluded(f"{tmp_path}/elsewhere", False, (st.st_dev + 1, st.st_ino))


def test_location_at_filesystem_root() -> None:
    r = Rules("/", exclude_dirs=["/proc"])
    assert r.full_path("") == "/" and r.full_path("proc") == "/proc"
    assert r.excluded("/proc", True) and not r.excluded("/", True)


def _config(extra: str) -> str:
    return example("client").replace("path = /home", "path = /home\n" + extra)


@pytest.mark.parametrize("key", [k for k in KEYS if k.endswith("_regex")])
def test_bad_regex_is_a_config_error_naming_file_location_and_key(key: str) -> None:
    cfg = parse_text(_config(f"{key} = ok\n    (unclosed"), "client", "/etc/boxbox/client.conf")
    with pytest.raises(ConfigError) as e:
        Rules.from_config(cfg, "home")
    assert str(e.value).startswith(f"/etc/boxbox/client.conf:location home.{key}: bad regular expression "
                                   "'(unclosed': missing ), unterminated subpattern")


def test_from_config_reads_all_eight_keys_and_excludes_client_files() -> None:
    text = _config("exclude_files = /home/a\n"
                   "exclude_files_regex = \\.o$\n    \\.a{1,3}$\n"
                   "exclude_dirs = /home/b\nexclude_dirs_regex = ^/home/c\n"
                   "always_include_files = /home/x.o\nalways_include_files_regex = keep\n"
                   "always_include_dirs = /home/c1\nalways_include_dirs_regex = ^/home/c2\n")
    text = text.replace("keys_file = keys.dat", "keys_file = /home/u/keys.dat")
    text = text.replace("data_directory = state", "data_directory = /home/u/.boxbox")
    r = Rules.from_config(parse_text(text, "client", "c.conf"), "home")
    assert r.excluded("/home/a", False) and r.excluded("/home/y.o", False) and r.excluded("/home/y.aaa", False)
    assert not r.excluded("/home/x.o", False) and not r.excluded("/home/keep.o", False)
    assert r.excluded("/home/b", True) and r.excluded("/home/c3", True)
    assert not r.excluded("/home/c1", True) and not r.excluded("/home/c2x", True)
    assert r.excluded("/home/u/keys.dat", False) and r.excluded("/home/u/.boxbox", True)


README_EXAMPLE = """
[location home]
path = /home
exclude_dirs = /home/guest
    alice/.cache
exclude_dirs_regex = ^/home/[^/]+/tmp$
exclude_files_regex = \\.(mp3|MP3)$
    ~$
always_include_files = /home/alice/speech.mp3
"""


def test_readme_example() -> None:
    text = example("client").split("# a directory tree to back up")[0] + README_EXAMPLE
    r = Rules.from_config(parse_text(text, "client", "client.conf"), "home")
    assert r.excluded("/home/guest", True) and r.excluded("/home/alice/.cache", True)
    assert r.excluded("/home/bob/tmp", True) and not r.excluded("/home/bob/src/tmp", True)
    assert r.excluded("/home/bob/song.MP3", False) and r.excluded("/home/bob/notes.txt~", False)
    assert not r.excluded("/home/alice/speech.mp3", False) and not r.excluded("/home/bob/notes.txt", False)
