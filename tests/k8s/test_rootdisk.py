"""A pod's root disk (k8s/rootdisk.py): an image's layers over an empty upper folder are
named by the layers and built once for every pod of the image; anything else is built per
pod (and boots cold); a3s.dev/boot picks snapshot or cold."""
from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from a3s_box.k8s.annotations import pod_boot
from a3s_box.k8s.rootdisk import layer_identity, root_disk, shared_image


@dataclass
class Mount:
    type: str
    source: str = "overlay"
    options: list[str] = field(default_factory=list)


def _layers(tmp: Path, n: int = 2) -> tuple[list[Path], Path]:
    lowers = []
    for i in range(n):
        d = tmp / "snapshots" / str(i + 1) / "fs"
        d.mkdir(parents=True)
        (d / f"file{i}").write_text(f"layer {i}\n")
        lowers.append(d)
    upper = tmp / "snapshots" / "9" / "fs"
    upper.mkdir(parents=True)
    return lowers, upper


def _overlay(lowers: list[Path], upper: Path) -> Mount:
    return Mount("overlay", options=["index=off", f"workdir={upper.parent / 'work'}", f"upperdir={upper}",
                                     "lowerdir=" + ":".join(map(str, lowers))])


def test_an_images_layers_name_its_disk(tmp_path: Path) -> None:
    lowers, upper = _layers(tmp_path)
    ident = layer_identity([_overlay(lowers, upper)])
    assert len(ident) == 32 and ident == layer_identity([_overlay(lowers, upper)])
    assert layer_identity([_overlay(lowers[:1], upper)]) != ident  # other layers
    assert layer_identity([_overlay(lowers[::-1], upper)]) != ident  # other order: another image
    (upper / "written").write_text("x")
    assert layer_identity([_overlay(lowers, upper)]) == ""  # no longer the image's content alone
    (upper / "written").unlink()
    assert layer_identity([Mount("bind", str(lowers[0]), ["rbind", "rw"])]) == ""
    assert layer_identity([_overlay(lowers, upper), _overlay(lowers, upper)]) == ""
    assert layer_identity([Mount("overlay", options=[f"lowerdir={lowers[0]}"])]) == ""  # read-only view
    assert layer_identity([_overlay([tmp_path / "gone"], upper)]) == ""
    # a snapshotter reset reuses a layer's path: its folder is another inode / change time
    old = layer_identity([_overlay(lowers, upper)])
    subprocess.run(["rm", "-rf", str(lowers[1])], check=True)
    lowers[1].mkdir()
    os.utime(lowers[1], ns=(1, 1))
    assert layer_identity([_overlay(lowers, upper)]) != old


def test_one_image_is_built_once_for_all_its_pods(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "hello").write_text("hi\n")
    made = []
    threads = [threading.Thread(target=lambda: made.append(shared_image(tmp_path / "cache", "abc", rootfs)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 1 and made[0].stat().st_nlink == 1  # one file, no temporary left linked
    inode = made[0].stat().st_ino
    assert shared_image(tmp_path / "cache", "abc", rootfs).stat().st_ino == inode  # never rebuilt
    assert [p.name for p in (tmp_path / "cache" / "pod-roots").iterdir() if p.name.endswith(".tmp")] == []


def test_a_pod_disk_sits_on_the_shared_image_or_its_own(tmp_path: Path) -> None:
    lowers, upper = _layers(tmp_path)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "hello").write_text("hi\n")
    state = tmp_path / "pod1"
    state.mkdir()
    disk, ident = root_disk(tmp_path / "cache", state, [_overlay(lowers, upper)], rootfs)
    info = subprocess.run(["qemu-img", "info", str(disk)], capture_output=True, text=True, check=True).stdout
    assert ident and f"pod-roots/{ident}.ext4" in info
    other = tmp_path / "pod2"
    other.mkdir()
    disk2, ident2 = root_disk(tmp_path / "cache", other, [Mount("bind", str(rootfs), ["rbind"])], rootfs)
    assert ident2 == "" and str(other / "rootfs.ext4") in subprocess.run(
        ["qemu-img", "info", str(disk2)], capture_output=True, text=True, check=True).stdout


def test_the_boot_annotation() -> None:
    assert pod_boot({}) == "snapshot" and pod_boot({"a3s.dev/boot": "cold"}) == "cold"
    with pytest.raises(ValueError, match="a3s.dev/boot: 'warm' is not one of snapshot, cold"):
        pod_boot({"a3s.dev/boot": "warm"})
