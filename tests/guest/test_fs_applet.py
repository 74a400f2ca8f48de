"""The guest's /.a3s/fs (stat, ls, mkdir, mv, watch) through BoxFiles, against the real
guest init (`--serve-stdio`), in the agent's namespaces as a box's files are.

The guest is the hostile side: names hold newlines, tabs and bytes that are not UTF-8,
symlinks point at / and at folders, and none of it may be followed or misparsed."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from a3s_box.files import BoxFiles, FilesError, FsEntry
from a3s_box.guest.protocol import Namespace

if TYPE_CHECKING:
    from tests.guest.conftest import LocalGuest

WEIRD = [b"new\nline", b"tab\there", b"\xff\xfe not utf-8", b"-rf", b" space ", b"quote\"'\\", b"\x01\x7f"]


@pytest.fixture
def files(guest: LocalGuest) -> BoxFiles:
    return BoxFiles(guest.client, "test", Namespace.AGENT, applets=str(guest.state_dir))


def _like_lstat(e: FsEntry, path: Path) -> None:
    st = os.lstat(path)
    assert (e.mode, e.mtime_ns, e.uid, e.gid) == (st.st_mode & 0o7777, st.st_mtime_ns, st.st_uid, st.st_gid)
    if e.kind != "dir":
        assert e.size == st.st_size


# --- stat ----------------------------------------------------------------------------
def test_stat_of_a_file_matches_lstat(files: BoxFiles, tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_bytes(b"hello")
    f.chmod(0o4751)
    e = files.stat(str(f))
    assert (e.kind, e.size, e.path, e.name, e.target, e.owner, e.group) == (
        "file", 5, str(f), "f.txt", None, "root", "root")
    _like_lstat(e, f)


def test_stat_names_an_unknown_owner_by_number(files: BoxFiles, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"")
    os.chown(f, 54321, 54322)
    e = files.stat(str(f))
    assert (e.uid, e.gid, e.owner, e.group) == (54321, 54322, "54321", "54322")


def test_stat_of_a_symlink_to_root_is_the_symlink(files: BoxFiles, tmp_path: Path) -> None:
    (tmp_path / "root").symlink_to("/")
    e = files.stat(str(tmp_path / "root"))
    assert (e.kind, e.target, e.path) == ("symlink", "/", str(tmp_path / "root"))
    _like_lstat(e, tmp_path / "root")


def test_stat_of_a_folder_and_of_slash(files: BoxFiles, tmp_path: Path) -> None:
    assert files.stat(str(tmp_path) + "/").kind == "dir"  # a trailing slash follows nothing
    root = files.stat("/")
    assert (root.kind, root.path, root.name) == ("dir", "/", "/")


def test_stat_of_a_missing_path_names_box_and_path(files: BoxFiles, tmp_path: Path) -> None:
    with pytest.raises(FilesError, match=rf"^box test: {tmp_path}/nope: No such file or directory$"):
        files.stat(str(tmp_path / "nope"))


def test_relative_paths_are_refused_on_the_host(files: BoxFiles) -> None:
    with pytest.raises(ValueError, match="must be absolute"):
        files.stat("etc/passwd")


# --- ls ------------------------------------------------------------------------------
def test_walk_names_any_byte_but_nul(files: BoxFiles, tmp_path: Path) -> None:
    for name in WEIRD:
        (tmp_path / os.fsdecode(name)).write_bytes(name)
    got = {e.name: e for e in files.walk(str(tmp_path))}
    assert sorted(got) == sorted(n.decode(errors="replace") for n in WEIRD)
    assert got["new\nline"].size == len(b"new\nline")
    assert got["tab\there"].path == f"{tmp_path}/tab\there"


def test_walk_depth_and_symlinks_are_not_descended(files: BoxFiles, tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "deep").write_text("x")
    (tmp_path / "a" / "f").write_text("f")
    (tmp_path / "root").symlink_to("/")
    (tmp_path / "alink").symlink_to("a")
    one = files.walk(str(tmp_path), 1)
    assert [(e.name, e.kind, e.target) for e in one] == [
        ("a", "dir", None), ("alink", "symlink", "a"), ("root", "symlink", "/")]
    rel = [e.path[len(str(tmp_path)):] for e in files.walk(str(tmp_path), 3)]
    assert rel == ["/a", "/a/b", "/a/b/c", "/a/f", "/alink", "/root"]
    rel = [e.path[len(str(tmp_path)):] for e in files.walk(str(tmp_path), 100)]
    assert rel[-3:] == ["/a/f", "/alink", "/root"] and "/a/b/c/deep" in rel
    for e in files.walk(str(tmp_path), 100):
        _like_lstat(e, Path(e.path))


def test_walk_of_an_empty_folder_is_empty(files: BoxFiles, tmp_path: Path) -> None:
    assert files.walk(str(tmp_path), 5) == []


@pytest.mark.parametrize("what", ["file", "symlink to a folder", "missing"])
def test_walk_of_what_is_not_a_folder_fails(files: BoxFiles, tmp_path: Path, what: str) -> None:
    p = tmp_path / "p"
    if what == "file":
        p.write_text("x")
    elif what == "symlink to a folder":
        p.symlink_to(tmp_path)
    why = "No such file or directory" if what == "missing" else "Not a directory"
    with pytest.raises(FilesError, match=rf"^box test: {p}: {why}$"):
        files.walk(str(p))


def test_walk_stops_at_its_limit(files: BoxFiles, tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i}").write_text("")
    with pytest.raises(FilesError, match="more than 10 entries"):
        files.walk(str(tmp_path), limit=10)
    assert len(files.walk(str(tmp_path), limit=50)) == 50


# --- mkdir, mv ---------------------------------------------------------------------------
def test_make_dir_makes_parents_and_says_whether_it_made_it(files: BoxFiles, tmp_path: Path) -> None:
    d = tmp_path / "x" / "y" / "new\nline"
    assert files.make_dir(str(d)) is True
    assert d.is_dir()
    assert files.make_dir(str(d)) is False
    assert files.make_dir("/") is False


def test_make_dir_over_a_file_fails(files: BoxFiles, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(FilesError, match=rf"^box test: {tmp_path}/f: File exists$"):
        files.make_dir(str(tmp_path / "f"))
    with pytest.raises(FilesError, match=rf"^box test: {tmp_path}/f/sub: Not a directory$"):
        files.make_dir(str(tmp_path / "f" / "sub"))
    assert (tmp_path / "f").read_text() == "x"


def test_move_renames_and_returns_the_new_entry(files: BoxFiles, tmp_path: Path) -> None:
    (tmp_path / "a").write_text("abc")
    e = files.move(str(tmp_path / "a"), str(tmp_path / "tab\tb"))
    assert (e.kind, e.size, e.path) == ("file", 3, f"{tmp_path}/tab\tb")
    assert not (tmp_path / "a").exists()


def test_move_of_a_symlink_moves_the_link(files: BoxFiles, tmp_path: Path) -> None:
    (tmp_path / "l").symlink_to("/")
    e = files.move(str(tmp_path / "l"), str(tmp_path / "m"))
    assert (e.kind, e.target) == ("symlink", "/")


def test_move_of_a_missing_file_fails(files: BoxFiles, tmp_path: Path) -> None:
    with pytest.raises(FilesError, match=rf"^box test: {tmp_path}/gone: No such file or directory$"):
        files.move(str(tmp_path / "gone"), str(tmp_path / "b"))


# --- watch -------------------------------------------------------------------------------
class Events:
    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []
        self.cond = threading.Condition()

    def __call__(self, kind: str, name: str) -> None:
        with self.cond:
            self.got.append((kind, name))
            self.cond.notify_all()

    def wait_for(self, *want: tuple[str, str], timeout: float = 10) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: all(w in self.got for w in want), timeout)
        assert ok, f"wanted {want}, got {self.got}"


@pytest.fixture
def watching(files: BoxFiles) -> Iterator[Callable[..., Events]]:
    started = []

    def start(path: Path, recursive: bool) -> Events:
        ev = Events()
        started.append(files.watch(str(path), recursive, ev))
        return ev
    yield start
    for w in started:
        w.stop()


def test_watch_recursive_sees_a_subfolder_change(watching: Callable[..., Events], tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    ev = watching(tmp_path, True)
    (tmp_path / "sub" / "f.txt").write_text("one")
    ev.wait_for(("create", "sub/f.txt"), ("write", "sub/f.txt"))
    (tmp_path / "sub" / "f.txt").chmod(0o600)
    os.rename(tmp_path / "sub" / "f.txt", tmp_path / "sub" / "new\nname")
    (tmp_path / "sub" / "new\nname").unlink()
    ev.wait_for(("chmod", "sub/f.txt"), ("rename", "sub/f.txt"), ("create", "sub/new\nname"),
                ("remove", "sub/new\nname"))


def test_watch_recursive_follows_new_folders(watching: Callable[..., Events], tmp_path: Path) -> None:
    ev = watching(tmp_path, True)
    (tmp_path / "n" / "m").mkdir(parents=True)
    (tmp_path / "n" / "m" / "f").write_text("x")
    ev.wait_for(("create", "n"), ("create", "n/m"), ("create", "n/m/f"))


def test_watch_writes_are_not_flooded(watching: Callable[..., Events], tmp_path: Path) -> None:
    ev = watching(tmp_path, False)
    t = time.monotonic()
    with open(tmp_path / "log", "wb", buffering=0) as f:
        for _ in range(2000):
            f.write(b"x")
    took = time.monotonic() - t
    ev.wait_for(("write", "log"))
    time.sleep(0.2)
    # one write event per 100 ms at most, however slow a busy host makes the writes
    assert ev.got.count(("write", "log")) <= 2 + took / 0.1, (took, ev.got)


def test_watch_without_r_sees_only_the_folder(watching: Callable[..., Events], tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    ev = watching(tmp_path, False)
    (tmp_path / "sub" / "inner").write_text("x")
    (tmp_path / "top").write_text("x")
    ev.wait_for(("create", "top"))
    assert not [e for e in ev.got if e[1].startswith("sub/")]


def test_watch_stop_ends_events(files: BoxFiles, tmp_path: Path) -> None:
    ev = Events()
    w = files.watch(str(tmp_path), False, ev)
    (tmp_path / "a").write_text("x")
    ev.wait_for(("create", "a"))
    w.stop()
    w.wait(10)
    assert w.done
    n = len(ev.got)
    (tmp_path / "b").write_text("x")
    time.sleep(0.2)
    assert len(ev.got) == n


def test_watch_of_a_file_or_symlink_fails(files: BoxFiles, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "l").symlink_to(tmp_path)
    for p in ("f", "l"):
        with pytest.raises(FilesError, match=rf"^box test: {tmp_path}/{p}: Not a directory$"):
            files.watch(str(tmp_path / p), True, Events())


def test_watch_ends_when_its_folder_goes(files: BoxFiles, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    w = files.watch(str(tmp_path / "d"), True, Events())
    (tmp_path / "d").rmdir()
    with pytest.raises(FilesError, match=rf"^box test: {tmp_path}/d: the folder is gone$"):
        w.wait(10)


def test_watch_callback_that_raises_stops_the_watch(files: BoxFiles, tmp_path: Path) -> None:
    def boom(kind: str, name: str) -> None:
        raise RuntimeError("callback bug")
    w = files.watch(str(tmp_path), False, boom)
    (tmp_path / "a").write_text("x")
    with pytest.raises(RuntimeError, match="callback bug"):
        w.wait(10)
    assert files.stat(str(tmp_path)).kind == "dir"  # the client lives on
