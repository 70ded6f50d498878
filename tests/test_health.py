"""`GET /health` and the RAID families of /metrics on a real server whose RAID directory goes away."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tests.clientutil import StoreServer, client_config, run_once
from tests.conftest import run_boxbox
from tests.test_metrics import get, scrape, value, with_metrics


def test_health_turns_503_without_a_raid_directory_and_200_after_repair(tmp_path: Path, test_ca: Any) -> None:
    server = StoreServer(tmp_path, test_ca)
    dirs = [tmp_path / f"raid{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    server.config.write_text(server.config.read_text().replace(
        f"directories = {tmp_path / 'disc'}", "directories = " + ", ".join(map(str, dirs))))
    port = with_metrics(server, "housekeeping_interval = 0\n")  # a pass would write, recreating the directory
    try:
        server.start()
        account = server.new_account()
        home = tmp_path / "home"
        home.mkdir()
        (home / "big").write_bytes(os.urandom(64 * 1024))
        conf = client_config(tmp_path, server, account, home, extra="minimum_file_age = 0\n")
        run_once(conf)
        assert get(port, "/health") == (200, "ok\n")
        healthy = scrape(port)
        assert value(healthy, "boxbox_store_healthy") == 1
        assert value(healthy, "boxbox_discset_directory_present", discset="0", directory="1") == 1

        shutil.rmtree(dirs[1])
        status, body = get(port, "/health")
        assert status == 503
        assert body == f"disc set 0: directory 1 ({dirs[1]}) is missing\n"
        degraded = scrape(port)
        assert value(degraded, "boxbox_store_healthy") == 0
        assert value(degraded, "boxbox_discset_directory_present", discset="0", directory="1") == 0
        assert value(degraded, "boxbox_discset_directory_present", discset="0", directory="0") == 1

        run_boxbox("query", "--config", str(conf), "restore", "/home", str(tmp_path / "out1"))
        assert (tmp_path / "out1" / "big").read_bytes() == (home / "big").read_bytes()
        after_read = scrape(port)
        reads = value(after_read, "boxbox_raid_degraded_reads_total")
        assert reads >= 1

        dirs[1].mkdir()  # the replaced disc, empty; then every stripe rebuilt
        assert get(port, "/health") == (200, "ok\n")
        run_boxbox("accounts", "--config", str(server.config), "check", "--all", "--fix", exit_code=3)
        run_boxbox("accounts", "--config", str(server.config), "check", "--all", exit_code=0)
        run_boxbox("query", "--config", str(conf), "restore", "/home", str(tmp_path / "out2"))
        repaired = scrape(port)
        assert value(repaired, "boxbox_raid_degraded_reads_total") == reads  # read from all three again
        assert value(repaired, "boxbox_store_healthy") == 1
    finally:
        server.stop()


def test_raid_counters_count_degraded_reads_and_repairs(tmp_path: Path) -> None:
    from boxbox.raidfile import DiscSet, stats

    dirs = [tmp_path / f"d{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    ds = DiscSet("0", dirs)
    data = os.urandom(20000)
    with ds.create("f") as w:
        w.write(data)
    before = stats.snapshot()
    (dirs[0] / "f.rf").unlink()
    with ds.open("f") as r:
        assert r.read() == data
    with ds.open("f") as r:
        r.read()
    assert ds.repair("f").repaired
    with ds.open("f") as r:
        assert r.read() == data
    after = stats.snapshot()
    # two degraded reads, plus the one the repair makes to rebuild the stripe; the last read is clean
    assert after["degraded_reads"] - before["degraded_reads"] == 3
    assert after["repairs"] - before["repairs"] == 1
