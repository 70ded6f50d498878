"""Upload streams and the uploader's fallbacks, in process."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from boxbox.backup import state as state_mod
from boxbox.backup.run import BackupRun
from boxbox.backup.daemon import load_config
from boxbox.backup.streams import FileChanged, RateLimit, whole_file
from boxbox.crypto.keys import Keys, load_keys
from boxbox.errors import UsageError
from boxbox.objects.attributes import attributes_from_path
from boxbox.objects.file import decode_file
from boxbox.wire import messages as m
from boxbox.wire.client import Client, Pending

from tests.clientutil import StoreServer, client_config, store_tree


def test_whole_file_stream_decodes(tmp_path: Path) -> None:
    keys = Keys.from_master(os.urandom(1024))
    p = tmp_path / "f"
    data = os.urandom(700_000)
    p.write_bytes(data)
    st = os.lstat(p)
    with open(p, "rb", buffering=0) as f:
        blob = b"".join(whole_file(keys, f, st, container_id=5, name=b"f", attributes=attributes_from_path(p, st),
                                   cipher="aes-256-gcm", limit=RateLimit(0)))
    out = io.BytesIO()
    decode_file(keys, io.BytesIO(blob), out, container_id=5, name=b"f")
    assert out.getvalue() == data


def test_a_file_changing_while_read_is_refused(tmp_path: Path) -> None:
    keys = Keys.from_master(os.urandom(1024))
    p = tmp_path / "f"
    p.write_bytes(os.urandom(2 << 20))
    st = os.lstat(p)
    with open(p, "rb", buffering=0) as f:
        gen = whole_file(keys, f, st, container_id=5, name=b"f", attributes=attributes_from_path(p, st),
                         cipher="aes-256-gcm", limit=RateLimit(0))
        next(gen)
        with open(p, "ab") as w:
            w.write(b"more")
        with pytest.raises(FileChanged):
            list(gen)
    # changed between the scan and the open
    with open(p, "rb", buffering=0) as f:
        with pytest.raises(FileChanged):
            next(whole_file(keys, f, st, container_id=5, name=b"f", attributes=attributes_from_path(p, st),
                            cipher="aes-256-gcm", limit=RateLimit(0)))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, test_ca: Any) -> Iterator[StoreServer]:
    srv = StoreServer(tmp_path_factory.mktemp("userver"), test_ca)
    srv.start()
    yield srv
    srv.stop()


class NoDiffClient(Client):
    """A client whose server refuses diff uploads, as servers before the versions work did."""

    refused = 0

    def submit(self, request: Any, upload: Any = None, download: bool = False) -> Pending:
        if isinstance(request, m.StoreFile) and request.diff_from:
            NoDiffClient.refused += 1
            pending = Pending(self, False)
            pending.done = True
            pending.error = UsageError("diff uploads are not supported by this server yet; upload the whole file")
            return pending
        return super().submit(request, upload, download)


def _setup(server: StoreServer, account: int, tmp_path: Path, tree: Path,
           client_class: type[Client]) -> tuple[Any, Keys, Callable[[], Client]]:
    """A client config for `tree`, its keys, and a connector that talks through `client_class`."""
    cfg = load_config(client_config(tmp_path, server, account, tree))
    keys = load_keys(cfg["client"]["keys_file"])
    cfg["client"]["data_directory"].mkdir()
    d = server.ca.client_dir(account)

    def connector() -> Client:
        from boxbox.wire import tls
        ctx = tls.client_context(d / "client.crt", d / "client.key", d / "ca.crt")
        return client_class.connect("127.0.0.1", server.port, ctx, server_hostname="localhost")

    return cfg, keys, connector


@pytest.mark.e2e
def test_refused_diff_falls_back_to_a_whole_upload(server: StoreServer, tmp_path: Path) -> None:
    account = server.new_account()
    tree = tmp_path / "tree"
    tree.mkdir()
    big = tree / "big"
    big.write_bytes(os.urandom(1 << 20))
    cfg, keys, connector = _setup(server, account, tmp_path, tree, NoDiffClient)

    def run() -> Any:
        st = state_mod.load_or_rebuild(cfg["client"]["data_directory"] / "state")
        return BackupRun(cfg, keys, st, cid=7, connector=connector).run()

    assert run().ok
    big.write_bytes(b"changed" + big.read_bytes())
    result = run()
    assert result.ok and result.stats.diffs == 0 and result.stats.files_uploaded == 1
    assert NoDiffClient.refused == 1
    assert store_tree(server, account, cfg["client"]["keys_file"])[b"big"][1] == big.read_bytes()


@pytest.mark.e2e
def test_lazy_mode_moves_a_renamed_file_at_once(server: StoreServer, tmp_path: Path) -> None:
    account = server.new_account()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(os.urandom(200_000))
    conf = client_config(tmp_path, server, account, tree, lazy=True, extra="minimum_file_age = 1h\n")
    cfg = load_config(conf)
    keys = load_keys(cfg["client"]["keys_file"])
    cfg["client"]["data_directory"].mkdir()
    state = state_mod.ClientState()
    assert BackupRun(cfg, keys, state, cid=9, force=True).run().ok
    os.rename(tree / "big", tree / "renamed")  # the rename makes its ctime new: too young to upload
    result = BackupRun(cfg, keys, state, cid=9).run()
    assert result.ok and result.stats.moved == 1 and result.stats.files_uploaded == 0
    stored = store_tree(server, account, cfg["client"]["keys_file"])
    assert set(stored) == {b"renamed"} and stored[b"renamed"][1] == (tree / "renamed").read_bytes()


@pytest.mark.e2e
def test_unreadable_file_is_reported_and_skipped(server: StoreServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    account = server.new_account()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "secret").write_bytes(b"no access")
    (tree / "fine").write_bytes(b"readable")
    conf = client_config(tmp_path, server, account, tree)
    cfg = load_config(conf)
    keys = load_keys(cfg["client"]["keys_file"])
    cfg["client"]["data_directory"].mkdir()
    real_open = open

    def deny(path: Any, *args: Any, **kwargs: Any) -> Any:  # tests run as root: permissions cannot deny
        if os.fsencode(path).endswith(b"/secret"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("boxbox.backup.uploader.open", deny, raising=False)
    result = BackupRun(cfg, keys, state_mod.ClientState(), cid=3).run()
    assert result.ok and result.stats.files_uploaded == 1
    assert result.stats.read_errors == ["home:secret: cannot read: Permission denied"]
    assert set(store_tree(server, account, cfg["client"]["keys_file"])) == {b"fine"}


class CountingClient(Client):
    """Records the requests a run sends, and the directory listings among them."""

    listed: list[int] = []
    sent: list[str] = []

    def submit(self, request: Any, upload: Any = None, download: bool = False) -> Pending:
        if isinstance(request, m.ListDirectory):
            CountingClient.listed.append(request.dir_id)
        CountingClient.sent.append(type(request).__name__ + ("+diff" if getattr(request, "diff_from", 0) else ""))
        return super().submit(request, upload, download)


@pytest.mark.e2e
def test_directories_created_by_the_run_are_never_listed(server: StoreServer, tmp_path: Path) -> None:
    """A first backup streams on into new subdirectories: only the root and the location's own directory are listed."""
    account = server.new_account()
    tree = tmp_path / "tree"
    for a in range(3):
        for b in range(2):
            (tree / f"a{a}" / f"b{b}").mkdir(parents=True)
            (tree / f"a{a}" / f"b{b}" / "f").write_bytes(b"%d %d" % (a, b))
        (tree / f"a{a}" / "g").write_bytes(os.urandom(5000))
    cfg, keys, connector = _setup(server, account, tmp_path, tree, CountingClient)

    CountingClient.listed = []
    result = BackupRun(cfg, keys, state_mod.ClientState(), cid=11, connector=connector).run()
    assert result.ok and result.stats.files_uploaded == 9 and result.stats.directories_created == 9
    assert len(CountingClient.listed) == 2
    stored = store_tree(server, account, cfg["client"]["keys_file"])
    assert stored[b"a2/b1/f"][1] == b"2 1" and stored[b"a0/g"][1] == (tree / "a0" / "g").read_bytes()


@pytest.mark.e2e
def test_diff_bases_of_a_directory_are_fetched_together(server: StoreServer, tmp_path: Path) -> None:
    """An incremental asks for every block index of a directory at once, then sends the diffs pipelined."""
    account = server.new_account()
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(3):
        (tree / f"big{i}").write_bytes(os.urandom(300_000))
    cfg, keys, connector = _setup(server, account, tmp_path, tree, CountingClient)

    state = state_mod.ClientState()
    assert BackupRun(cfg, keys, state, cid=12, connector=connector).run().ok
    for i in range(3):
        p = tree / f"big{i}"
        p.write_bytes(p.read_bytes() + b"appended %d" % i)
    CountingClient.sent = []
    result = BackupRun(cfg, keys, state, cid=12, connector=connector).run()
    assert result.ok and result.stats.diffs == 3
    asked = [i for i, r in enumerate(CountingClient.sent) if r == "GetBlockIndexByName"]
    diffs = [i for i, r in enumerate(CountingClient.sent) if r == "StoreFile+diff"]
    assert len(asked) == 3 and len(diffs) == 3 and max(asked) < min(diffs)
    stored = store_tree(server, account, cfg["client"]["keys_file"])
    assert all(stored[b"big%d" % i][1] == (tree / f"big{i}").read_bytes() for i in range(3))


class RoundTripClient(Client):
    """Counts round trips: waits for a reply to a request sent after the previous wait began
    (replies to requests already in flight during an earlier wait are not a new round trip)."""

    round_trips = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sent = 0
        self._seq: dict[int, int] = {}
        self._horizon = 0

    def submit(self, request: Any, upload: Any = None, download: bool = False) -> Pending:
        pending = super().submit(request, upload, download)
        self._sent += 1
        self._seq[id(pending)] = self._sent
        return pending

    def _resolve(self, target: Pending) -> None:
        seq = self._seq.pop(id(target), 0)
        if not target.done and seq > self._horizon:
            RoundTripClient.round_trips += 1
            self._horizon = self._sent
        super()._resolve(target)


def _incremental_round_trips(server: StoreServer, tmp_path: Path, n: int) -> int:
    """Round trips of an incremental over `n` changed directories (a rewritten small file and an appended
    diffable file in each), one of which also gains a subdirectory (so its sync cannot be held back)."""
    account = server.new_account()
    tree = tmp_path / "tree"
    for i in range(n):
        (tree / f"d{i:02d}" / "sub").mkdir(parents=True)
        (tree / f"d{i:02d}" / "f").write_bytes(b"small %d" % i)
        (tree / f"d{i:02d}" / "g").write_bytes(os.urandom(20_000))
        (tree / f"d{i:02d}" / "sub" / "h").write_bytes(b"unchanged")
    cfg, keys, connector = _setup(server, account, tmp_path, tree, RoundTripClient)

    state = state_mod.ClientState()
    assert BackupRun(cfg, keys, state, cid=13, connector=connector).run().ok
    for i in range(n):
        (tree / f"d{i:02d}" / "f").write_bytes(b"changed %d" % i)
        with open(tree / f"d{i:02d}" / "g", "ab") as f:
            f.write(b"appended %d" % i)
    (tree / "d00" / "new").mkdir()  # d00 needs the new id before the scan goes into it
    (tree / "d00" / "new" / "x").write_bytes(b"in a new directory")
    RoundTripClient.round_trips = 0
    result = BackupRun(cfg, keys, state, cid=13, connector=connector).run()
    round_trips = RoundTripClient.round_trips
    assert result.ok, result.error
    assert result.stats.files_uploaded == 2 * n + 1 and result.stats.diffs == n
    assert result.stats.directories_created == 1
    stored = store_tree(server, account, cfg["client"]["keys_file"])
    for i in range(n):
        for name in ("f", "g", "sub/h"):
            assert stored[b"d%02d/%s" % (i, name.encode())][1] == (tree / f"d{i:02d}" / name).read_bytes()
    assert stored[b"d00/new/x"][1] == b"in a new directory"
    again = BackupRun(cfg, keys, state, cid=13, connector=connector).run()  # (racy directories are listed again)
    assert again.ok and again.stats.files_uploaded == 0 and again.stats.directories_created == 0
    return round_trips


@pytest.mark.e2e
def test_incremental_round_trips_do_not_grow_with_the_changed_directories(server: StoreServer,
                                                                          tmp_path: Path) -> None:
    """Changed directories whose subdirectories the scan already knows are listed ahead of any upload, with
    their block indexes, so an incremental waits a fixed number of times (was 2-3 waits a directory)."""
    few = _incremental_round_trips(server, tmp_path / "few", 3)
    many = _incremental_round_trips(server, tmp_path / "many", 12)
    assert many == few
    assert many <= 12


@pytest.mark.e2e
def test_a_held_back_directory_whose_recorded_subdirectory_is_gone_is_recreated(
        server: StoreServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The scan enters a held-back directory's subdirectories with the recorded ids; if the store no longer
    has one there (changed behind the client's back), that subtree is skipped and created again next run."""
    from boxbox.backup.run import connect

    account = server.new_account()
    tree = tmp_path / "tree"
    (tree / "a" / "sub").mkdir(parents=True)
    (tree / "a" / "f").write_bytes(b"one")
    (tree / "a" / "sub" / "h").write_bytes(b"one")
    conf = client_config(tmp_path, server, account, tree)
    cfg = load_config(conf)
    keys = load_keys(cfg["client"]["keys_file"])
    cfg["client"]["data_directory"].mkdir()
    state = state_mod.ClientState()
    assert BackupRun(cfg, keys, state, cid=14).run().ok
    records = state.location("home").records
    sub_id = records.store_id(records.find(b"a/sub"))
    other = connect(cfg)
    other.login()
    other.delete_directory(sub_id)
    other.finish()
    (tree / "a" / "f").write_bytes(b"two")
    (tree / "a" / "sub" / "h").write_bytes(b"two")
    result = BackupRun(cfg, keys, state, cid=14).run()
    assert result.ok, result.error
    assert "home:a/sub: its recorded store id is not on the store there" in caplog.text
    assert store_tree(server, account, cfg["client"]["keys_file"])[b"a/f"][1] == b"two"
    result = BackupRun(cfg, keys, state, cid=14).run()
    assert result.ok, result.error
    stored = store_tree(server, account, cfg["client"]["keys_file"])
    assert stored[b"a/f"][1] == b"two" and stored[b"a/sub/h"][1] == b"two"
