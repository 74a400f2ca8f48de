"""Host's facades over a real home (SQLite state, volume folders, qcow2 snapshot chains;
no VM): host.volumes, host.snapshots and host.image_catalog know which boxes use what,
and refuse to remove what a box still uses."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from a3s_box.errors import BoxError
from a3s_box.orchestrator.host import Host
from a3s_box.orchestrator.state import BoxRow
from a3s_box.volumes import VolumeError


def _box(host: Host, name: str, volumes: list[dict[str, str]] | None = None, base: Path | None = None,
         image: str = "sha256:" + "c" * 64) -> None:
    host.store.put_box(BoxRow(f"p.{name}", "p", name, "sha256:x", {"volumes": volumes or []}, image,
                              "qemu", None, "stopped"))
    if base is not None:
        d = host.home.box_dir(f"p.{name}")
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        str(base / "disk.qcow2"), str(d / "disk.qcow2")], check=True)


def _volume(host: Host, project: str, name: str) -> None:
    d = host.home.root / "volumes" / f"{project}.{name}"
    d.mkdir(parents=True)
    with open(d / "disk.ext4", "wb") as f:
        f.truncate(1 << 20)
    (d / "volume.json").write_text(json.dumps({"project": project, "name": name, "size": 1 << 20}))


def _template(host: Host, folder: str, meta: dict[str, object], restorable: bool = True) -> Path:
    d = host.home.cache / "snapshots" / folder
    d.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(d / "disk.qcow2"), "16M"], check=True)
    if restorable:
        (d / "ram").write_bytes(b"r")
        (d / "state").write_bytes(b"s")
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def test_volumes_know_their_users_and_keep_a_used_one(tmp_path: Path) -> None:
    with Host(tmp_path) as host:
        for project, name in (("p", "data"), ("p", "cache"), ("q", "data")):
            _volume(host, project, name)
        _box(host, "coder", [{"type": "volume", "source": "data", "target": "/d"}])
        _box(host, "other", [{"type": "bind", "source": "/data", "target": "/d"}])
        vols = host.volumes
        assert [(v.project, v.name) for v in vols.list()] == [("p", "cache"), ("p", "data"), ("q", "data")]
        assert vols.users(vols.find("p.data")) == ["coder"]
        assert vols.users(vols.find("data", "q")) == []
        with pytest.raises(VolumeError, match="in several projects"):
            vols.find("data")
        with pytest.raises(VolumeError, match="in use by box coder; delete that box first"):
            vols.remove("data", "p")
        assert vols.remove("q.data").name == "data"
        assert [(v.project, v.name) for v in vols.list()] == [("p", "cache"), ("p", "data")]
        bf = host.load([_boxfile(tmp_path)], for_apply=False)
        said: list[str] = []
        gone = vols.remove_project(bf, on_removed=lambda v: said.append(v.name))
        assert [v.name for v in gone] == said == ["cache", "data"]  # no check: for after delete_project
        assert vols.list() == []


def _boxfile(tmp_path: Path) -> Path:
    f = tmp_path / "Boxfile.yaml"
    f.write_text("apiVersion: box.a3s.dev/v1\nproject: p\n")
    return f


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_snapshots_know_the_boxes_on_them_and_keep_a_used_one(tmp_path: Path) -> None:
    with Host(tmp_path) as host:
        used = _template(host, "aaaa1111.1", {"image": "sha256:" + "c" * 64, "vcpus": 2, "memory_mib": 256,
                                              "accel": "tcg", "created": 10.0})
        _template(host, "aaaa2222.1", {"image": "sha256:" + "d" * 64})
        _template(host, "bbbb3333.1", {"image": "sha256:" + "e" * 64}, restorable=False)
        layer = _template(host, "fork-1-abc", {"kind": "fork", "source": "p.coder"}, restorable=False)
        _box(host, "coder", base=used)
        _box(host, "third", base=used)
        _box(host, "forked", base=layer)
        snaps = host.snapshots
        listed = {s.key: s for s in snaps.list()}
        assert [(k, s.kind, s.boxes) for k, s in listed.items()] == [
            ("aaaa1111.1", "template", ("coder", "third")), ("aaaa2222.1", "template", ()),
            ("bbbb3333.1", "retired", ()), ("fork-1-abc", "fork", ("forked",))]
        t = listed["aaaa1111.1"]
        assert (t.image, t.source, t.vcpus, t.memory_mib, t.accel, t.created) == (
            "sha256:" + "c" * 64, "", 2, 256, "tcg", 10.0)
        assert listed["fork-1-abc"].source == "p.coder" and listed["fork-1-abc"].vcpus is None
        with pytest.raises(BoxError, match="snapshot aaaa: ambiguous prefix"):
            snaps.remove(["aaaa"])
        with pytest.raises(BoxError, match="snapshot zzz: no such snapshot"):
            snaps.remove(["zzz"])
        with pytest.raises(BoxError, match="the disks of boxes coder, third sit on it"):
            snaps.remove(["aaaa1"])
        said: list[str] = []
        with pytest.raises(BoxError, match="ambiguous prefix"):  # prefixes as they were when called
            snaps.remove(["aaaa2", "aaaa"], on_removed=said.append)
        assert said == ["aaaa2222.1"]
        assert snaps.prune(on_removed=said.append) == ["bbbb3333.1"]
        assert [s.key for s in snaps.list()] == ["aaaa1111.1", "fork-1-abc"]


def test_the_image_catalog_knows_what_boxes_use(tmp_path: Path) -> None:
    with Host(tmp_path) as host:
        assert host.image_catalog.in_use() == set()
        _box(host, "coder", image="sha256:" + "c" * 64)
        assert host.image_catalog.in_use() == {"sha256:" + "c" * 64}
        assert host.image_catalog.get("nope") is None
        assert host.image_catalog.prune() == [] and host.image_catalog.prune(0) == []
        assert host.image_catalog is host.image_catalog  # one facade per Host
