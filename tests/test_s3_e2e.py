"""The end-to-end scenarios again, with the store on SeaweedFS instead of a raidfile disc set.

The test functions are the very ones of the raidfile modules (backup and incremental with
diffs: test_client; restore and point in time: test_restore; housekeeping and its locks:
test_housekeep; versions and background housekeeping are in test_s3_servers); imported
here, they run against this module's fixtures, which put the store on a fresh bucket.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from boxbox.store.account import Store

from tests.clientutil import StoreServer
from tests.serverutil import make_store
from tests.test_client import (  # noqa: F401 - collected here, on the S3 store
    test_changed_big_file_is_sent_as_a_diff, test_every_kind_of_entry, test_lost_or_corrupt_state_is_rebuilt_from_the_store,
    test_nothing_changed_does_not_connect, test_renames_are_moves_and_chmod_sends_attributes, test_snapshot_end_to_end,
)
from tests.test_housekeep import A as HK_ACCOUNT
from tests.test_housekeep import (  # noqa: F401
    test_a_dead_writer_is_settled_by_the_next_one, test_hard_limit_refuses_and_housekeeping_makes_room,
    test_housekeeping_and_writers_never_overlap, test_never_beside_a_writing_client,
    test_removes_empty_deleted_directories_and_chains_stay_readable, test_retention_keeps_recent_versions_and_trims_by_age,
    test_soft_limit_trims_in_box_backup_order, test_usage_counts_corrected, test_yields_to_a_client_that_logs_in,
)
from tests.test_restore import A as RESTORE_ACCOUNT
from tests.test_restore import Env
from tests.test_restore import (  # noqa: F401
    test_damaged_object_is_named_and_the_rest_restored, test_full_restore_is_identical,
    test_old_versions_and_deleted_files, test_point_in_time_chooses_versions_by_mtime_and_deletions_by_directory_time,
    test_quick_compare_finds_a_change_without_downloading_data, test_resume_after_interruption_downloads_only_the_rest,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, test_ca: Any,
           seaweed: Any) -> Iterator[Any]:
    """test_client's `StoreServer` on a bucket."""
    srv = StoreServer(tmp_path_factory.mktemp("s3server"), test_ca, s3=seaweed.new_bucket())
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture()
def store(tmp_path: Path, seaweed: Any) -> Store:
    return make_store(tmp_path, (HK_ACCOUNT, 100_000, 200_000), s3=seaweed.new_bucket())


class S3Env(Env):
    """test_restore's store, on a bucket."""

    def __init__(self, tmp: Path, s3: Any) -> None:
        super().__init__(tmp)
        self.store = make_store(tmp / "s3", s3=s3)
        self.store.create_account(RESTORE_ACCOUNT, 1_000_000, 2_000_000, "0", "restore")


@pytest.fixture()
def env(tmp_path: Path, seaweed: Any) -> Iterator[Env]:
    e = S3Env(tmp_path, seaweed.new_bucket())
    yield e
    e.close()

