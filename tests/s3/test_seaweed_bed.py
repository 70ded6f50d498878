"""The SeaweedFS test bed skips, with the reason, when it cannot run; it never silently passes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import conftest, seaweed


@pytest.fixture
def fresh_lookup() -> Iterator[None]:
    seaweed.weed_binary.cache_clear()
    yield
    seaweed.weed_binary.cache_clear()


def test_missing_wheel_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             fresh_lookup: None) -> None:
    monkeypatch.setattr(seaweed, "WEED_DIST", "no-such-distribution")
    with pytest.raises(pytest.skip.Exception, match="no-such-distribution is not installed"):
        conftest._start_seaweed("server", tmp_path)


def test_weed_that_cannot_run_is_unavailable(tmp_path: Path) -> None:
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'exec format error' >&2\nexit 126\n")
    fake.chmod(0o755)
    with pytest.raises(seaweed.SeaweedUnavailable, match="exited 126: exec format error"):
        seaweed._check_runs(fake)
