"""A build step's tree, read from the guest's stream in userspace (issue 22, item 9:
the host used to loop-mount the disk the guest wrote).

The stream is made by the real guest init (`/.a3s/tar L`, run by the host in a chroot
of a test folder standing in for the VM's root); hostile streams are made by hand and
by hypothesis. The diff from the stream must equal the diff of the same tree on disk."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from a3s_box.imagebuild.diff import DiskTree, diff_trees, write_tar
from a3s_box.imagebuild.guest_tree import GuestTree, GuestTreeError
from a3s_box.guest.build import build_guest_init


@pytest.fixture(scope="module")
def guest_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root (a mount namespace and chroot stand in for the VM)")
    return build_guest_init(tmp_path_factory.mktemp("init"))


def _stream(guest_tar: Path, root: Path, since: float) -> bytes:
    (root / ".a3s").mkdir(exist_ok=True)
    shutil.copy(guest_tar, root / ".a3s" / "tar")
    r = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {root} {root} && mount --make-private {root} "
                        f"&& chroot {root} /.a3s/tar L {since:.9f}"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _tree(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "keep").write_text("unchanged\n")
    (root / "etc" / "gone").write_text("deleted by the step\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_text("#!/bin/sh\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "old").mkdir()
    (root / "old" / "a").write_text("a")


def test_the_guests_stream_gives_the_same_layer_as_the_disk(guest_tar: Path, tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    _tree(lower)
    shutil.copytree(lower, upper, symlinks=True, copy_function=shutil.copy2)
    time.sleep(0.05)
    since = time.time()
    time.sleep(0.05)
    # the step: change, add, delete, a hard link, a symlink, setuid, a fifo, a device,
    # a folder emptied of what it had
    (upper / "etc" / "new").write_text("made by the step\n")
    (upper / "etc" / "gone").unlink()
    (upper / "bin" / "tool").write_text("#!/bin/sh\necho changed\n")
    os.link(upper / "bin" / "tool", upper / "bin" / "tool2")
    os.symlink("tool", upper / "bin" / "link")
    (upper / "bin" / "suid").write_bytes(b"\x7fELF")
    os.chmod(upper / "bin" / "suid", 0o4755)
    os.mkfifo(upper / "etc" / "fifo")
    os.mknod(upper / "etc" / "null", 0o666 | 0o020000, os.makedev(1, 3))
    (upper / "old" / "a").unlink()
    (upper / "old" / "b").write_text("b")
    data = _stream(guest_tar, upper, since)
    shutil.rmtree(upper / ".a3s")  # the guest's own: never in a layer (nor compared)
    tree = GuestTree.read(io.BytesIO(data), tmp_path / "spool", 1 << 30)
    from_stream = diff_trees(DiskTree(lower), tree, since)
    assert from_stream == diff_trees(lower, upper, since)
    a, b = io.BytesIO(), io.BytesIO()
    write_tar(from_stream, tree, a)
    write_tar(from_stream, upper, b)
    assert a.getvalue() == b.getvalue()  # byte for byte: the same layer digest
    with tarfile.open(fileobj=io.BytesIO(a.getvalue())) as t:
        names = {m.name: m for m in t.getmembers()}
    assert names["bin/suid"].mode == 0o4755 and names["etc/null"].ischr() and names["bin/tool2"].islnk()
    assert "etc/.wh.gone" in names and "old/.wh..wh..opq" in names and "etc/keep" not in names
    # untouched files came without their contents: only the step's changes crossed
    # (and the copy of the guest's tar this test put in the folder)
    assert sorted(p.stat().st_size for p in (tmp_path / "spool").iterdir()) == sorted(
        [len("made by the step\n"), len("#!/bin/sh\necho changed\n"), 4, 1, guest_tar.stat().st_size])


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def _m(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "",
       pax: dict[str, str] | None = None) -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type, t.size, t.linkname, t.pax_headers = kind, size, link, pax or {}
    return t


@pytest.mark.parametrize("why,stream", [
    ("an absolute name", lambda: _tar((_m("/etc/x", size=1), b"x"))),
    ("..", lambda: _tar((_m("a", tarfile.DIRTYPE), None), (_m("a/../../x", size=1), b"x"))),
    ("no parent listed", lambda: _tar((_m("a/b", size=1), b"x"))),
    ("listed twice", lambda: _tar((_m("x", size=1), b"x"), (_m("x", size=1), b"y"))),
    ("a hard link to a later or missing file", lambda: _tar((_m("x", tarfile.LNKTYPE, link="y"), None))),
    ("a hard link out of the tree", lambda: _tar((_m("x", tarfile.LNKTYPE, link="/etc/shadow"), None))),
    ("an untouched file with content", lambda: _tar((_m("x", size=1, pax={"A3S.skipped": "1", "A3S.size": "1"}),
                                                     b"x"))),
    ("content on a symlink", lambda: _tar((_m("x", tarfile.SYMTYPE, size=3, link="y"), b"abc"))),
    ("a bad time", lambda: _tar((_m("x", pax={"ctime": "soon"}), b""))),
    ("a socket-like type", lambda: _tar((_m("x", b"7"), None))),
])
def test_a_hostile_stream_is_refused(tmp_path: Path, why: str, stream: Callable[[], io.BytesIO]) -> None:
    with pytest.raises(GuestTreeError):
        GuestTree.read(stream(), tmp_path / "spool", 1 << 20)
    assert list((tmp_path / "spool").iterdir()) == [] or why == "listed twice"


def test_more_changed_data_than_the_disk_holds_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GuestTreeError, match="more changed data than its disk holds"):
        GuestTree.read(_tar((_m("a", size=600), b"a" * 600), (_m("b", size=600), b"b" * 600)),
                       tmp_path / "spool", 1000)


def test_a_changed_file_sent_as_untouched_fails_the_layer(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "x").write_text("old")
    tree = GuestTree.read(_tar((_m("x", pax={"A3S.skipped": "1", "A3S.size": "999", "ctime": "1"}), None)),
                          tmp_path / "spool", 1 << 20)
    changes = diff_trees(DiskTree(lower), tree, time.time())
    with pytest.raises(GuestTreeError, match="changed, yet the step's VM sent it as untouched"):
        write_tar(changes, tree, io.BytesIO())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=4000))
def test_arbitrary_bytes_are_a_tree_or_a_refusal_and_write_only_into_the_spool(tmp_path: Path, data: bytes) -> None:
    spool = tmp_path / "spool"
    shutil.rmtree(spool, ignore_errors=True)
    for raw in (data, b"\0" * 1024 + data):
        try:
            GuestTree.read(io.BytesIO(raw), spool, 1 << 20)
        except GuestTreeError:
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool"]
    assert all(p.is_file() and not p.is_symlink() for p in spool.iterdir())
