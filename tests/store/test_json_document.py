"""JsonDocument: concurrent `box` processes editing one file lose nothing; a corrupt file
is named, or rebuilt where its content can be; the id table on top of it."""
from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from a3s_box.jail.ids import UID_BASE, UID_SPAN, IdTable
from a3s_box.json_document import CorruptDocument, JsonDocument


def _bump(path: str, key: str, times: int) -> None:
    doc = JsonDocument(Path(path), Path(path + ".lock"))
    for _ in range(times):
        with doc.edit() as d:
            d[key] = d.get(key, 0) + 1
            d["total"] = d.get("total", 0) + 1


def test_processes_editing_at_once_lose_no_change(tmp_path: Path) -> None:
    path = str(tmp_path / "doc.json")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_bump, args=(path, f"p{i}", 50)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    doc = JsonDocument(Path(path), Path(path + ".lock")).read()
    assert doc == {"p0": 50, "p1": 50, "p2": 50, "p3": 50, "total": 200}


def test_an_edit_that_raises_saves_nothing(tmp_path: Path) -> None:
    doc = JsonDocument(tmp_path / "d.json", tmp_path / "d.lock")
    with doc.edit() as d:
        d["a"] = 1
    with pytest.raises(RuntimeError):
        with doc.edit() as d:
            d["a"] = 2
            raise RuntimeError("half way")
    assert doc.read() == {"a": 1}


def test_unchanged_document_is_not_rewritten(tmp_path: Path) -> None:
    doc = JsonDocument(tmp_path / "d.json", tmp_path / "d.lock")
    with doc.edit() as d:
        d["a"] = 1
    before = (tmp_path / "d.json").stat().st_ino
    with doc.edit() as d:
        d["a"] = 1
    assert (tmp_path / "d.json").stat().st_ino == before


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\x00\x01"])
def test_corrupt_document_is_refused_or_rebuilt(tmp_path: Path, text: str) -> None:
    (tmp_path / "d.json").write_text(text)
    doc = JsonDocument(tmp_path / "d.json", tmp_path / "d.lock")
    with pytest.raises(CorruptDocument):
        doc.read()
    with pytest.raises(CorruptDocument):
        with doc.edit():
            pass
    assert (tmp_path / "d.json").read_text() == text  # refused: left as it was
    with doc.edit(corrupt_as_empty=True) as d:
        assert d == {}
    assert json.loads((tmp_path / "d.json").read_text()) == {}


def test_id_table_keeps_ids_and_frees_those_of_the_gone(tmp_path: Path) -> None:
    table = IdTable(tmp_path / "ids.json")
    alive = {"a", "b"}
    a = table.allocate("a", alive.__contains__)
    b = table.allocate("b", alive.__contains__)
    assert a != b and all(UID_BASE <= i < UID_BASE + UID_SPAN for i in (a, b))
    assert table.allocate("a", alive.__contains__) == a
    alive.discard("b")
    table.allocate("c", alive.__contains__)
    assert "b" not in json.loads((tmp_path / "ids.json").read_text())
    table.release("a")
    assert "a" not in json.loads((tmp_path / "ids.json").read_text())


def test_id_table_rebuilds_a_corrupt_table(tmp_path: Path) -> None:
    (tmp_path / "ids.json").write_text("{torn")
    table = IdTable(tmp_path / "ids.json")
    first = table.allocate("x", lambda _: True)
    assert json.loads((tmp_path / "ids.json").read_text()) == {"x": first}
