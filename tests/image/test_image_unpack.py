"""Layer application: whiteouts, and every hostile layer we could think of.

Each hostile case checks both the outcome (a clear ImageError or a safe result inside
the root) and that nothing outside the root changed. We run as root here, so a
mistake would really write outside.
"""
from __future__ import annotations

import io
import logging
import os
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from a3s_box.errors import ImageError
from a3s_box.home import Home
from a3s_box.image import ImageStore
from a3s_box.image.unpack import RootWriter
from tests.registry import Entry, busybox_layout, layer_tar

E = Entry


def snapshot(d: Path) -> dict[str, tuple[int, int, bytes]]:
    out = {}
    for p in sorted(d.rglob("*")):
        st = p.lstat()
        body = os.readlink(p).encode() if p.is_symlink() else p.read_bytes() if p.is_file() else b""
        out[str(p.relative_to(d))] = (st.st_mode, st.st_nlink, body)
    return out


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, Path]:
    """(root, outside): `outside` is a sibling folder holding a secret a layer must not touch."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    return root, outside


def apply(root: Path, *layers: Sequence[Entry]) -> None:
    with RootWriter(str(root), "test-image") as w:
        for i, layer in enumerate(layers):
            w.apply(io.BytesIO(layer_tar(layer)), "", what=f"layer {i + 1}")


def check_outside(outside: Path) -> None:
    assert snapshot(outside) == {"secret": (stat.S_IFREG | 0o644, 1, b"host secret")}


@pytest.mark.parametrize(("layers", "message"), [
    ([[E("../outside/evil", data=b"x")]], "'../outside/evil' points outside the root"),
    ([[E("a/../../outside/evil", data=b"x")]], "points outside the root"),
    ([[E("/etc/evil", data=b"x")]], "'/etc/evil' has an absolute path"),
    ([[E("h", "hardlink", link="../outside/secret")]], "'../outside/secret' points outside"),
    ([[E("h", "hardlink", link="etc/shadow")]], "target is not a file in the image"),
    ([[E("s", "symlink", link="../outside"), E("h", "hardlink", link="s/secret")]],
     "target is not a file in the image"),
    ([[E("../.wh.outside", data=b"")]], "points outside the root"),
    ([[E("d", "dir", mode=0o755), E("d/.wh..", data=b"")]], "whiteout 'd/.wh..' points outside"),
    ([[E("a", "symlink", link="b"), E("b", "symlink", link="a")], [E("a/x", data=b"x")]],
     "too many levels of symlinks"),
    ([[E("f", data=b"file")], [E("f/x", data=b"x")]], "'f' is not a directory"),
])
def test_hostile_layer_is_refused(box: tuple[Path, Path], layers: list[list[Entry]],
                                  message: str) -> None:
    root, outside = box
    with pytest.raises(ImageError, match="test-image") as e:
        apply(root, *layers)
    assert message in str(e.value)
    check_outside(outside)


def test_symlink_planted_then_written_through_stays_inside(box: tuple[Path, Path]) -> None:
    root, outside = box
    apply(root,
          [E("rel", "symlink", link="../../outside"), E("abs", "symlink", link=str(outside)),
           E("chain1", "symlink", link="chain2"), E("chain2", "symlink", link="/../rel"),
           E("etc", "dir", mode=0o755), E("etc/passwd", "symlink", link=str(outside / "secret"))],
          [E("rel/a", data=b"1"), E("abs/b", data=b"2"), E("chain1/c", data=b"3"),
           E("etc/passwd", data=b"root:x:0:0\n"), E("abs/.wh.secret", data=b"")])
    check_outside(outside)
    # resolved as in a chroot: the writes land inside the root
    assert (root / "outside" / "a").read_bytes() == b"1"
    assert (root / "outside" / "c").read_bytes() == b"3"
    assert (root / outside.relative_to("/") / "b").read_bytes() == b"2"
    # a file over a planted symlink replaces the link, it never writes through it
    assert not (root / "etc" / "passwd").is_symlink()
    assert (root / "etc" / "passwd").read_bytes() == b"root:x:0:0\n"
    # symlinks themselves are kept as data
    assert os.readlink(root / "abs") == str(outside)


def test_device_nodes_are_skipped_with_a_warning(box: tuple[Path, Path],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    root, outside = box
    with caplog.at_level(logging.WARNING, logger="a3s_box.image.unpack"):
        apply(root, [E("dev", "dir", mode=0o755), E("dev/null", "char", mode=0o666),
                     E("dev/sda", "block"), E("dev/fifo", "fifo", mode=0o600)])
    assert sorted(p.name for p in (root / "dev").iterdir()) == ["fifo"]
    assert stat.S_ISFIFO((root / "dev" / "fifo").lstat().st_mode)
    assert "skipping device node dev/null" in caplog.text
    check_outside(outside)


def test_whiteouts(box: tuple[Path, Path]) -> None:
    root, _ = box
    apply(root,
          [E("d", "dir", mode=0o755), E("d/a", data=b"a"), E("d/sub", "dir", mode=0o755),
           E("d/sub/x", data=b"x"), E("keep", "dir", mode=0o755), E("keep/f", data=b"f"),
           E("keep/g", data=b"g"), E("gone", "dir", mode=0o755), E("gone/y", data=b"y")],
          [E("d/new", data=b"new"), E("d/.wh..wh..opq", data=b""), E("keep/.wh.f", data=b""),
           E(".wh.gone", data=b""), E(".wh.never-existed", data=b"")])
    assert sorted(p.name for p in (root / "d").iterdir()) == ["new"]  # opaque keeps this layer's
    assert sorted(p.name for p in (root / "keep").iterdir()) == ["g"]
    assert not (root / "gone").exists()


def test_diff_id_and_garbage_are_errors(box: tuple[Path, Path]) -> None:
    root, _ = box
    with RootWriter(str(root), "test-image") as w:
        with pytest.raises(ImageError, match="does not match its diff_id"):
            w.apply(io.BytesIO(layer_tar([E("f", data=b"x")])), "", "sha256:" + "0" * 64)
        with pytest.raises(ImageError, match="could not be unpacked"):
            w.apply(io.BytesIO(b"this is not a tar file" * 100), "gz")


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """What must agree between two unpackers: type, mode, owner, content or link target."""
    out: dict[str, tuple[object, ...]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        body: object = (os.readlink(p) if stat.S_ISLNK(st.st_mode)
                        else p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
        mode = st.st_mode if not stat.S_ISLNK(st.st_mode) else stat.S_IFLNK
        out[str(p.relative_to(root))] = (mode, st.st_uid, st.st_gid, body)
    return out


def test_same_root_as_umoci_unpack(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    busybox_layout(layout, [
        [E("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000::/home/agent:/bin/sh\n"),
         E("home", "dir", mode=0o755), E("home/agent", "dir", mode=0o700, uid=1000, gid=1000),
         E("home/agent/notes", data=b"mine", mode=0o600, uid=1000, gid=1000),
         E("usr/bin/tool", data=b"#!/bin/sh\necho tool\n", mode=0o4755),
         E("usr/bin/tool2", "hardlink", link="usr/bin/tool"),
         E("etc/.wh.group", data=b""), E("opt", "dir", mode=0o755), E("opt/x", data=b"x")],
        [E("opt/.wh..wh..opq", data=b""), E("opt/y", data=b"y"), E("bin/.wh.rm", data=b""),
         E("run", "dir", mode=0o755), E("run/fifo", "fifo", mode=0o644)],
    ])
    store = ImageStore(Home(tmp_path / "home"))
    ours = store.unpacked_dir(store.import_path(layout, tag="x"))
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:latest", str(tmp_path / "bundle")],
                   check=True, capture_output=True)
    theirs = tree(tmp_path / "bundle" / "rootfs")
    mine = tree(ours)
    assert len(mine) > 30 and mine == theirs
    assert "etc/group" not in mine and "bin/rm" not in mine and "opt/x" not in mine
    assert (ours / "usr/bin/tool").stat().st_ino == (ours / "usr/bin/tool2").stat().st_ino
