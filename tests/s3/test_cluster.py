"""S3 on a replicated SeaweedFS cluster keeps working while a volume server is down.

The pattern for store tests that need a failing back end: `seaweed_cluster.kill_volume(i)`
is a crash (SIGKILL), `restart_volume(i)` brings the same server back on its data.
"""

from __future__ import annotations

import os

from boxbox.s3.client import S3Client


def test_put_get_survive_a_dead_volume_server(seaweed_cluster) -> None:  # noqa: ANN001
    objects: dict[str, bytes] = {}
    with S3Client(seaweed_cluster.new_bucket()) as c:
        def write(prefix: str, n: int) -> None:
            for i in range(n):
                objects[f"{prefix}/{i}"] = os.urandom(20_000 + i)
                c.put_object(f"{prefix}/{i}", objects[f"{prefix}/{i}"])

        def read_all() -> None:
            for key, data in objects.items():
                assert c.get_object(key) == data, key

        write("before", 30)
        placement = seaweed_cluster.volume_servers(c.settings.bucket)
        assert placement and all(len(set(servers)) == 2 for servers in placement.values()), placement
        pids = seaweed_cluster.pids
        seaweed_cluster.kill_volume(0)
        assert len(seaweed_cluster.pids) == len(pids) - 1
        read_all()  # every object has a second copy (replication 001)
        write("during", 30)
        read_all()
        seaweed_cluster.restart_volume(0)
        seaweed_cluster.kill_volume(1)
        read_all()
        write("after", 10)
        read_all()
        seaweed_cluster.restart_volume(1)
        assert sorted(o.key for o in c.list_objects("")) == sorted(objects)
