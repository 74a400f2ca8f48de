"""Pulls and imports on a home whose disk is full (issue 24): a real 60 MiB tmpfs as the
home, images of random (incompressible) data bigger than it, pulled from the local
registry or imported from a layout or a `docker save` tar; and an export to a folder
too small for it.

Each ends in one DiskFullError naming the home, with the figures when they are known
before anything is written, and leaves no partial download, temp file or half-unpacked
root behind: the space is free again afterwards."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from a3s_box.disks import space
from a3s_box.errors import DiskFullError
from a3s_box.home import Home
from a3s_box.image import ImageStore
from a3s_box.image.layout import export_layout
from tests.image.test_image_store import docker_save_tar
from tests.registry import Entry, Registry, busybox_layout, layer_tar, write_oci_layout
from tests.small_disk import SmallDisk, small_disk  # noqa: F401  (the fixture)

MiB = 1 << 20
HOME_SIZE = 60 * MiB
BIG = 80 * MiB  # more than the home holds at all
MEDIUM = 35 * MiB  # its download fits; unpacked beside it, it does not


def _layer(size: int) -> bytes:
    return layer_tar([Entry("data", data=os.urandom(size))])


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("full-disk-layouts")
    write_oci_layout(d / "big", [_layer(BIG)], compress=False, tag="1")
    write_oci_layout(d / "medium", [_layer(MEDIUM)], compress=False, tag="1")
    return d


@pytest.fixture(scope="module")
def refs(registry: Registry, layouts: Path) -> dict[str, str]:
    registry.push_oci_layout(layouts / "big", "full/big:1")
    registry.push_oci_layout(layouts / "medium", "full/medium:1")
    return {"big": registry.ref("full/big:1"), "medium": registry.ref("full/medium:1")}


def _store(home: Path) -> ImageStore:
    return ImageStore(Home(home), retries=1, backoff=0.001)


def assert_nothing_left(home: Path) -> None:
    """No partial, temp file, blob or unpacked root: every file left is an empty lock (or
    the index, with no record, or the state store, which every command through Host opens)."""
    held = {str(p.relative_to(home)): p.stat().st_size for p in home.rglob("*")
            if p.is_file() and p.name not in ("index.json", "state.db", "state.db-wal", "state.db-shm")
            and (p.stat().st_size or p.name.endswith((".partial", ".tmp")) or "put-" in p.name)}
    assert held == {}
    unpacked = home / "images" / "unpacked"
    assert not unpacked.is_dir() or [p.name for p in unpacked.iterdir() if not p.name.endswith(".lock")] == []
    assert _store(home).list() == []


def figures(message: str) -> tuple[int, int]:
    m = re.search(r"needs (\d+) MiB more; (\d+) MiB free\)$", message)
    assert m, message
    return int(m.group(1)), int(m.group(2))


@pytest.mark.registry
def test_a_pull_bigger_than_the_free_space_is_refused_before_downloading(
        small_disk: SmallDisk, refs: dict[str, str]) -> None:
    home = small_disk.mount(HOME_SIZE)
    with pytest.raises(DiskFullError) as err:
        _store(home).pull(refs["big"])
    assert str(err.value).startswith(f"image {refs['big']}: no space left on {home} (needs ")
    needed, free = figures(str(err.value))
    assert needed >= BIG // MiB and free <= HOME_SIZE // MiB and free >= HOME_SIZE // MiB - 1
    assert err.value.path == str(home) and err.value.needed is not None and err.value.needed > BIG
    assert_nothing_left(home)


@pytest.mark.registry
def test_a_download_that_meets_a_full_disk_removes_its_partial(
        small_disk: SmallDisk, refs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """As when another writer takes the space after the check: the download itself fails."""
    home = small_disk.mount(HOME_SIZE)
    monkeypatch.setattr(space, "require", lambda what, where, needed: None)
    with pytest.raises(DiskFullError) as err:
        _store(home).pull(refs["big"])
    assert re.fullmatch(rf"image {re.escape(refs['big'])}: no space left on {home} \((\d+) MiB free\)",
                        str(err.value)), str(err.value)
    assert isinstance(err.value.__cause__, OSError)
    assert_nothing_left(home)
    assert small_disk.free(home) >= HOME_SIZE - MiB


@pytest.mark.registry
def test_a_pull_whose_unpacking_fills_the_disk_leaves_nothing(
        small_disk: SmallDisk, refs: dict[str, str]) -> None:
    home = small_disk.mount(HOME_SIZE)
    with pytest.raises(DiskFullError, match=rf"^image {re.escape(refs['medium'])}: no space left on {home} "):
        _store(home).pull(refs["medium"])
    assert_nothing_left(home)
    assert small_disk.free(home) >= HOME_SIZE - MiB


def test_an_import_bigger_than_the_free_space_is_refused(small_disk: SmallDisk, layouts: Path,
                                                         tmp_path: Path) -> None:
    home = small_disk.mount(HOME_SIZE)
    with pytest.raises(DiskFullError) as err:
        _store(home).import_path(layouts / "big", tag="big:1")
    assert str(err.value).startswith(f"image {layouts / 'big'}: no space left on {home} (needs ")
    needed, free = figures(str(err.value))
    assert needed > free and needed >= BIG // MiB
    assert_nothing_left(home)

    saved = tmp_path / "big.tar"
    docker_save_tar(saved, [_layer(BIG)], {"Cmd": ["/bin/sh"]}, "big:1")
    with pytest.raises(DiskFullError) as err:
        _store(home).import_path(saved)
    needed, free = figures(str(err.value))
    assert needed > free and needed >= BIG // MiB
    assert_nothing_left(home)


def test_an_import_whose_unpacking_fills_the_disk_leaves_nothing(small_disk: SmallDisk,
                                                                  layouts: Path) -> None:
    home = small_disk.mount(HOME_SIZE)
    with pytest.raises(DiskFullError, match=rf"^image {re.escape(str(layouts / 'medium'))}: no space left on "):
        _store(home).import_path(layouts / "medium")
    assert_nothing_left(home)
    assert small_disk.free(home) >= HOME_SIZE - MiB


def test_a_full_home_still_uses_its_images_and_frees_itself_by_removing_them(
        small_disk: SmallDisk, tmp_path: Path) -> None:
    """Filled to the last byte by something else: an image in the store is still handed
    out (its last-used time is not worth failing for), and `box image rm` / `prune` make
    room though even the smaller index needs some to be written."""
    home = small_disk.mount(16 * MiB)
    busybox_layout(tmp_path / "a")
    busybox_layout(tmp_path / "b", [[Entry("b", data=os.urandom(1 << 20))]])
    store = _store(home)
    a = store.import_path(tmp_path / "a")
    store.import_path(tmp_path / "b", tag="b:1")
    filler = small_disk.fill(home)
    assert small_disk.free(home) < 4096
    assert store.ensure(tmp_path / "a").digest == a.digest
    assert [r.name for r in store.remove("b:1")] == ["b:1"]
    assert small_disk.free(home) > MiB
    small_disk.fill(home, name=".filler2")
    assert [r.name for r in store.prune(set())] == [a.name]
    filler.unlink()
    (home / ".filler2").unlink()
    assert_nothing_left(home)


def test_an_export_bigger_than_its_destination_is_refused(small_disk: SmallDisk, layouts: Path,
                                                          tmp_path: Path) -> None:
    store = _store(tmp_path / "home")  # on the big disk
    r = store.import_path(layouts / "medium", tag="medium:1")
    out = small_disk.mount(16 * MiB, "out")
    with pytest.raises(DiskFullError) as err:
        export_layout(store.blobs, r.name, r.digest, out / "oci")
    assert str(err.value).startswith(f"image medium:1: export to {out / 'oci'}: no space left on {out} (needs ")
    needed, free = figures(str(err.value))
    assert needed >= MEDIUM // MiB and free == 16
    assert small_disk.files(out) == []


def _box(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "A3S_BOX_HOME": str(home), "PYTHONPATH": str(Path(__file__).parents[2])}
    env.pop("A3S_BOX_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "a3s_box.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_a_full_home_still_lists_and_prunes_through_the_cli(small_disk: SmallDisk, tmp_path: Path) -> None:
    """What the message says to do works on a home filled to the last byte."""
    home = small_disk.mount(16 * MiB)
    busybox_layout(tmp_path / "a")
    assert _box(home, "image", "import", str(tmp_path / "a"), "--tag", "a:1").returncode == 0
    assert _box(home, "ps").returncode == 0  # the state store exists, its last connection closed
    small_disk.fill(home)
    for args in (["ps"], ["image", "ls"], ["volume", "ls"], ["snapshot", "ls"]):
        r = _box(home, *args)
        assert r.returncode == 0 and r.stderr == "", (args, r.stderr)
    r = _box(home, "delete", "nobox")
    assert (r.returncode, r.stderr) == (1, "error: box nobox: no such box (see `box ps`)\n")
    r = _box(home, "image", "prune")
    assert (r.returncode, r.stdout, r.stderr) == (0, "removed a:1\n", "")
    assert small_disk.free(home) > MiB


@pytest.mark.registry
def test_box_image_pull_on_a_full_home_says_so_and_exits_1(small_disk: SmallDisk,
                                                           refs: dict[str, str]) -> None:
    home = small_disk.mount(HOME_SIZE)
    r = _box(home, "image", "pull", refs["big"])
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: image {refs['big']}: no space left on {home} (needs "), r.stderr
    needed, free = figures(last)
    assert needed >= BIG // MiB and free >= HOME_SIZE // MiB - 1
    assert_nothing_left(home)
