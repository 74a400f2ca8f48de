"""A step's change as a layer: diff a tree after the step against the tree before, write
the layer, apply it over the old tree with the store's own layer writer, and get the
new tree back exactly (whiteouts, opaque folders, type changes, hard links), minus the
paths the guest owns."""
from __future__ import annotations

import io
import os
import shutil
import tarfile
import time
from pathlib import Path

from a3s_box.imagebuild.diff import Change, compress, diff_trees, write_tar
from a3s_box.image.unpack import RootWriter


def _tree(root: Path) -> dict[str, tuple[str, int, str]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            if p.is_symlink():
                out[rel] = ("link", st.st_mode, os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode, "")
            else:
                out[rel] = ("file", st.st_mode, p.read_bytes().decode(errors="replace"))
    return out


def _lower(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc/keep").write_text("kept\n")
    (root / "etc/gone").write_text("deleted by the step\n")
    (root / "etc/edit").write_text("aaaa\n")
    (root / "etc/mode").write_text("x\n")
    (root / "data/sub").mkdir(parents=True)
    (root / "data/a").write_text("a")
    (root / "data/sub/b").write_text("b")
    (root / "wasdir/deep").mkdir(parents=True)
    (root / "wasdir/deep/f").write_text("f")
    (root / "link").symlink_to("etc/keep")
    (root / "etc/resolv.conf").write_text("nameserver 1.1.1.1\n")


def test_a_layer_takes_the_old_tree_to_the_new_one(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    _lower(lower)
    shutil.copytree(lower, upper, symlinks=True, copy_function=shutil.copy2)
    time.sleep(0.01)
    before = time.time()
    time.sleep(0.01)
    (upper / "etc/gone").unlink()
    (upper / "etc/edit").write_text("bbbb\n")  # same size; touched during the step
    os.chmod(upper / "etc/mode", 0o600)
    shutil.rmtree(upper / "data/sub")
    (upper / "data/a").unlink()
    (upper / "data/fresh").write_text("new")  # data/: every earlier entry gone -> opaque
    shutil.rmtree(upper / "wasdir")
    (upper / "wasdir").write_text("now a file")
    (upper / "link").unlink()
    (upper / "link").symlink_to("etc/mode")
    (upper / "bin").mkdir()
    (upper / "bin/tool").write_text("#!/bin/sh\n")
    os.link(upper / "bin/tool", upper / "bin/tool2")
    (upper / ".a3s").mkdir()  # the guest init's own: never in a layer
    (upper / ".a3s/init").write_text("guest init")
    (upper / "etc/resolv.conf").write_text("nameserver 10.0.2.3\n")

    changes = diff_trees(lower, upper, touched_after=before)
    assert Change("delete", "etc/gone") in changes and Change("opaque", "data") in changes
    assert Change("add", "etc/edit") in changes and Change("add", "etc/keep") not in changes
    assert not any(c.path.startswith(".a3s") or c.path == "etc/resolv.conf" for c in changes)
    tar_path = tmp_path / "layer.tar"
    with open(tar_path, "wb") as f:
        write_tar(changes, upper, f)
    with tarfile.open(tar_path) as t:
        names = {m.name: m for m in t.getmembers()}
    assert "etc/.wh.gone" in names and "data/.wh..wh..opq" in names
    assert names["bin/tool2"].islnk() and names["bin/tool2"].linkname == "bin/tool"

    layer = compress(tar_path, tmp_path / "layer.tar.gz")
    again = compress(tar_path, tmp_path / "again.tar.gz")
    assert layer.digest == again.digest  # deterministic: same tar, same blob
    result = tmp_path / "result"
    shutil.copytree(lower, result, symlinks=True, copy_function=shutil.copy2)
    with RootWriter(str(result), "test") as w, open(layer.path, "rb") as blob:
        w.apply(blob, "gz", layer.diff_id)
    want = {k: v for k, v in _tree(upper).items() if not k.startswith(".a3s")}
    want["etc/resolv.conf"] = _tree(lower)["etc/resolv.conf"]  # the lower tree's stays
    assert _tree(result) == want


def test_an_untouched_tree_gives_an_empty_layer(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    _lower(lower)
    shutil.copytree(lower, upper, symlinks=True, copy_function=shutil.copy2)
    assert diff_trees(lower, upper, touched_after=time.time() + 1) == []
    buf = io.BytesIO()
    write_tar([], upper, buf)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as t:
        assert t.getmembers() == []


def test_tmp_is_in_a_layer_only_when_a_step_left_files_there(tmp_path: Path) -> None:
    # the guest init makes /tmp and chmods it 1777 at every boot: that alone is no change
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    _lower(lower)
    shutil.copytree(lower, upper, symlinks=True, copy_function=shutil.copy2)
    time.sleep(0.05)
    started = time.time()  # the step's VM boots: what is newer, the VM did
    (upper / "tmp").mkdir()
    os.chmod(upper / "tmp", 0o1777)
    assert diff_trees(lower, upper, touched_after=started) == []
    (upper / "tmp/pkg.deb").write_text("downloaded by one RUN, read by the next")
    assert diff_trees(lower, upper, touched_after=started) == [Change("add", "tmp"),
                                                               Change("add", "tmp/pkg.deb")]
