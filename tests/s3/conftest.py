"""Fixtures shared by the S3 tests that go through the fault proxy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3.proxy import FaultProxy


@pytest.fixture(scope="module")
def proxy(seaweed) -> Iterator[FaultProxy]:  # noqa: ANN001
    """A fault proxy in front of the session's SeaweedFS S3 port, one per test module."""
    p = FaultProxy(int(seaweed.endpoint.rsplit(":", 1)[1])).start()
    yield p
    p.stop()
