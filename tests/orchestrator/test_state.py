"""The state store on a real SQLite file: migrations, round trips, concurrent writers, a full disk."""
from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from a3s_box.errors import DiskFullError, StateError
from a3s_box.orchestrator.state import SCHEMA_VERSION, BoxRow, ImageBinding, PoolRow, StateStore
from tests.small_disk import SmallDisk, small_disk  # noqa: F401  (the fixture)


def _row(name: str, project: str = "p", **kw: Any) -> BoxRow:
    base: dict[str, Any] = dict(id=f"{project}.{name}", project=project, name=name, spec_hash="sha256:1",
                spec={"a": [1, 2]}, image="sha256:abc", driver="qemu", handle=None,
                status="running")
    base.update(kw)
    return BoxRow(**base)


def test_fresh_store_is_at_the_current_schema_version(tmp_path: Path) -> None:
    StateStore(tmp_path / "s.db").close()
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_store_from_a_newer_a3s_box_is_refused(tmp_path: Path) -> None:
    StateStore(tmp_path / "s.db").close()
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="newer than this a3s-box understands"):
        StateStore(tmp_path / "s.db")


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "s.db").write_bytes(b"garbage" * 1000)
    with pytest.raises(StateError, match="unreadable"):
        StateStore(tmp_path / "s.db")


def test_boxes_round_trip_and_update_in_place(tmp_path: Path) -> None:
    s = StateStore(tmp_path / "s.db")
    s.put_box(_row("b"))
    s.put_box(_row("a", handle={"pid": 3}))
    s.put_box(_row("x", project="other"))
    assert [r.id for r in s.boxes("p")] == ["p.a", "p.b"]
    a = s.box("p.a")
    assert a is not None and a.handle == {"pid": 3}
    b = s.box("p.b")
    assert b is not None
    created = b.created_at
    s.put_box(_row("b", status="stopped", spec_hash="sha256:2"))
    b = s.box("p.b")
    assert b is not None and b.status == "stopped" and b.spec_hash == "sha256:2"
    assert b.created_at == created
    s.delete_box("p.b")
    assert s.box("p.b") is None
    assert s.images_in_use() == {"sha256:abc"}


def test_pools_images_and_journal(tmp_path: Path) -> None:
    s = StateStore(tmp_path / "s.db")
    s.put_pool(PoolRow("p", "coders", "h1", {"min_ready": 2}))
    s.put_pool(PoolRow("p", "coders", "h2", {"min_ready": 3}))
    assert s.pools("p") == [PoolRow("p", "coders", "h2", {"min_ready": 3})]
    s.put_image_binding(ImageBinding("p", "base", "reg/x:1", "sha256:9"))
    assert s.image_bindings("p")[0].digest == "sha256:9"
    e = s.journal_begin("p.a", "create", "/run/x")
    assert [j.action for j in s.journal()] == ["create"]
    s.journal_end(e)
    assert s.journal() == []


def _writer(path: str, worker: int) -> None:
    s = StateStore(Path(path))
    for i in range(50):
        with s.transaction():
            s.put_box(_row(f"w{worker}-{i}"))


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    StateStore(Path(path)).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(StateStore(Path(path)).boxes("p")) == 100


def _opener(path: str, barrier_path: str) -> None:
    while not Path(barrier_path).exists():  # start together
        pass
    StateStore(Path(path)).boxes()


def test_processes_opening_a_new_home_at_once_all_succeed(tmp_path: Path) -> None:
    """Found by the watch test: `box ps` and `box apply` racing to create the tables."""
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(5):
        path, go = str(tmp_path / f"s{round_}.db"), str(tmp_path / f"go{round_}")
        procs = [ctx.Process(target=_opener, args=(path, go)) for _ in range(4)]
        for p in procs:
            p.start()
        Path(go).touch()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0


def test_a_full_disk_fails_the_write_and_leaves_the_store_readable_and_whole(small_disk: SmallDisk) -> None:
    """A real full disk under the store (a tmpfs filled to the last byte): every write
    that cannot be made is a DiskFullError naming the folder, the rows before it stay,
    none of a failed transaction's rows is kept, and once space is freed the same
    store (and a new one) reads and writes as before."""
    home = small_disk.mount(8 << 20)
    s = StateStore(home / "state.db")
    s.put_box(_row("kept"))
    with s.transaction():
        s.put_pool(PoolRow("p", "coders", "h1", {"min_ready": 2}))
    big = {"blob": "x" * (1 << 20)}  # more than the WAL holds already: it must grow
    filler = small_disk.fill(home)

    with pytest.raises(DiskFullError) as err:
        s.put_box(_row("big", spec=big))
    assert str(err.value).startswith(f"state store {home / 'state.db'}: no space left on {home} (")
    with pytest.raises(DiskFullError):
        with s.transaction():
            s.put_box(_row("small"))
            s.put_box(_row("big", spec=big))
    with pytest.raises(DiskFullError):
        with s.transaction():
            s.put_pool(PoolRow("p", "other", "h", big))
    with pytest.raises(DiskFullError):
        StateStore(home / "new.db")  # its tables cannot be made
    assert [r.name for r in s.boxes()] == ["kept"]  # still readable, on the same connection
    other = sqlite3.connect(home / "state.db")
    assert [r[0] for r in other.execute("SELECT name FROM boxes")] == ["kept"]
    other.close()

    filler.unlink()
    s.put_box(_row("after"))  # the same store writes again
    with s.transaction():
        s.put_pool(PoolRow("p", "later", "h2"))
    s.close()
    again = StateStore(home / "state.db")
    assert [r.name for r in again.boxes()] == ["after", "kept"]
    assert [p.name for p in again.pools()] == ["coders", "later"]
    check = sqlite3.connect(home / "state.db")
    assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    check.close()
    again.close()
    StateStore(home / "new.db").close()  # what could not be made then is made now


def test_a_store_opened_on_a_full_disk_reads_and_refuses_writes(small_disk: SmallDisk) -> None:
    """The last connection removed WAL's files; a new one (`box ps`, `box image prune`)
    finds no room to make them again: it still reads, and a write is a DiskFullError."""
    home = small_disk.mount(8 << 20)
    s = StateStore(home / "state.db")
    s.put_box(_row("kept"))
    s.close()
    filler = small_disk.fill(home)

    full = StateStore(home / "state.db")
    assert [r.name for r in full.boxes()] == ["kept"] and full.images_in_use() == {"sha256:abc"}
    with pytest.raises(DiskFullError, match=f"^state store {home / 'state.db'}: no space left on {home} "):
        full.delete_box("p.kept")
    with pytest.raises(DiskFullError):
        with full.transaction():
            full.put_box(_row("new"))
    assert [r.name for r in full.boxes()] == ["kept"]
    full.close()

    filler.unlink()
    s = StateStore(home / "state.db")
    s.put_box(_row("after"))
    assert [r.name for r in s.boxes()] == ["after", "kept"]
    s.close()
