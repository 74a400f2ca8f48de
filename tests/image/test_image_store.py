"""The store without a registry: imports, caching, removal, eviction, roots and box disks."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from a3s_box.errors import ImageError
from a3s_box.home import Home
from a3s_box.image import ImageRecord, ImageStore
from a3s_box.image.blobs import sha256_file
from tests.registry import Entry, busybox_entries, busybox_layout, layer_tar

E = Entry


def intact(store: ImageStore) -> set[str]:
    """Blobs under final names, each hashing to its name; no unpack leftovers."""
    blobs = set(store.blobs.all())
    for b in blobs:
        assert sha256_file(store.blobs.path(b)) == b
    unpacked = store.root / "unpacked"
    assert not unpacked.is_dir() or all(not p.name.endswith(".tmp") for p in unpacked.iterdir())
    return blobs


def docker_save_tar(path: Path, layers: list[bytes], config: dict[str, object], tag: str) -> None:
    """The `docker save` format: manifest.json, <id>.json config, <dir>/layer.tar."""
    diff_ids = ["sha256:" + hashlib.sha256(gzip.decompress(x) if x[:2] == b"\x1f\x8b" else x).hexdigest()
                for x in layers]
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                      "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    files = {cfg_name: cfg}
    for i, x in enumerate(layers):
        files[f"l{i}/layer.tar"] = x
    files["manifest.json"] = json.dumps([{"Config": cfg_name, "RepoTags": [tag],
                                          "Layers": [f"l{i}/layer.tar" for i in range(len(layers))]}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("layouts")
    busybox_layout(d / "a", config={"Cmd": ["/bin/sh"], "Labels": {"org.a3s.box.x": "1"}})
    busybox_layout(d / "b", [[E("b", data=b"b" * 5000)]])
    busybox_layout(d / "c", [[E("c", data=os.urandom(200_000))]])
    return d


def test_import_layout_and_names(tmp_path: Path, layouts: Path) -> None:
    store = ImageStore(Home(tmp_path))
    r = store.import_path(layouts / "a", tag="mine")
    assert r.name == "mine" and r.config.cmd == ("/bin/sh",)
    assert store.get("mine") == r and store.get(r.digest) == r
    assert store.get("other") is None
    untagged = store.import_path(layouts / "b")
    assert untagged.name == str(layouts / "b")  # its ref.name "latest" is only a tag


def test_import_docker_save_tarball(tmp_path: Path) -> None:
    tar = tmp_path / "saved.tar"
    docker_save_tar(tar, [layer_tar(busybox_entries()),
                          gzip.compress(layer_tar([E("etc/.wh.group", data=b"")]))],
                    {"Entrypoint": ["/bin/sh"], "Env": ["A=1"]}, "example/saved:2")
    store = ImageStore(Home(tmp_path / "home"))
    r = store.import_path(tar)
    assert r.name == "docker.io/example/saved:2" and r.config.entrypoint == ("/bin/sh",)
    root = store.unpacked_dir(r)
    assert (root / "etc/passwd").is_file() and not (root / "etc/group").exists()
    assert intact(store) == set(r.blobs)


def test_ensure_reimports_only_on_change(tmp_path: Path) -> None:
    layout = tmp_path / "img"
    first = busybox_layout(layout, [[E("v", data=b"1")]])
    store = ImageStore(Home(tmp_path / "home"))
    r1 = store.ensure(layout)
    assert r1.digest == first and r1.name == str(layout.absolute())
    # Unchanged index.json: not read again (the layer blobs could even be gone).
    for p in (layout / "blobs" / "sha256").iterdir():
        if p.stat().st_size > 100_000:
            p.unlink()
    assert store.ensure(layout).digest == first
    second = busybox_layout(layout, [[E("v", data=b"2")]])
    r2 = store.ensure(layout)
    assert r2.digest == second != first
    assert (store.unpacked_dir(r2) / "v").read_bytes() == b"2"
    assert not (store.root / "unpacked" / first[7:]).exists()  # the old version was swept
    assert intact(store) == set(r2.blobs)


def test_ensure_ref_in_store_needs_no_network(tmp_path: Path, layouts: Path) -> None:
    store = ImageStore(Home(tmp_path))
    ref = "127.0.0.1:1/never/pulled:1"  # nothing listens on port 1
    r = store.import_path(layouts / "a", tag=ref)
    assert store.ensure(ref).digest == r.digest


@pytest.mark.parametrize("bad", ["digest", "hostile", "media"])
def test_bad_import_leaves_store_intact(tmp_path: Path, layouts: Path, bad: str) -> None:
    store = ImageStore(Home(tmp_path / "home"))
    keep = store.import_path(layouts / "a", tag="keep")
    layout = tmp_path / "bad"
    busybox_layout(layout, [[E("../../escape", data=b"x")]] if bad == "hostile"
                   else [[E("unique", data=os.urandom(5000))]])
    if bad == "digest":  # flip a byte of a new layer: its bytes no longer match its name
        big = max((p for p in (layout / "blobs" / "sha256").iterdir()
                   if not store.blobs.has("sha256:" + p.name)), key=lambda p: p.stat().st_size)
        data = bytearray(big.read_bytes())
        data[100] ^= 0xFF
        big.write_bytes(bytes(data))
    if bad == "media":
        idx = json.loads((layout / "index.json").read_text())
        mpath = layout / "blobs" / "sha256" / idx["manifests"][0]["digest"][7:]
        m = json.loads(mpath.read_text())
        m["mediaType"] = "application/vnd.example.unknown+json"
        raw = json.dumps(m).encode()
        digest = hashlib.sha256(raw).hexdigest()
        (layout / "blobs" / "sha256" / digest).write_bytes(raw)
        idx["manifests"][0].update(digest=f"sha256:{digest}", size=len(raw))
        (layout / "index.json").write_text(json.dumps(idx))
    with pytest.raises(ImageError) as e:
        store.import_path(layout, tag="bad")
    assert {"digest": "does not match its digest", "hostile": "points outside the root",
            "media": "unsupported manifest media type"}[bad] in str(e.value)
    assert [r.name for r in store.list()] == ["keep"]
    assert not (tmp_path / "escape").exists()
    assert intact(store) == set(keep.blobs)  # nothing of the failed import stays
    assert store.unpacked_dir(keep).is_dir()


def test_rm_prune_keep_shared_blobs(tmp_path: Path, layouts: Path) -> None:
    store = ImageStore(Home(tmp_path))
    a = store.import_path(layouts / "a", tag="a")
    b = store.import_path(layouts / "b", tag="b")
    c = store.import_path(layouts / "c", tag="c")
    shared = set(a.layers) & set(b.layers)
    assert shared and intact(store) == set(a.blobs) | set(b.blobs) | set(c.blobs)
    assert [r.name for r in store.remove("a")] == ["a"]
    assert shared <= intact(store) and a.config_digest not in intact(store)
    with pytest.raises(ImageError, match="image a: no such image"):
        store.remove("a")
    assert [r.name for r in store.prune({c.digest})] == ["b"]
    assert [r.name for r in store.list()] == ["c"] and intact(store) == set(c.blobs)


def test_evict_lru_never_in_use(tmp_path: Path, layouts: Path) -> None:
    store = ImageStore(Home(tmp_path))
    recs: dict[str, ImageRecord] = {}
    for n in ("a", "b", "c"):
        recs[n] = store.import_path(layouts / n, tag=n)
    store.create_box_disk(recs["c"], tmp_path / "c.qcow2")  # c becomes the most recently used
    with store.index.locked() as records:  # a is oldest, then b (set explicitly: no clock games)
        for i, n in enumerate(("a", "b", "c")):
            records[n] = ImageRecord(**{**records[n].__dict__, "last_used": float(i)})
    assert store.evict_to(10 ** 12, set()) == []
    before = store.disk_usage()
    evicted = store.evict_to(before - 1, {recs["a"].digest})  # a in use: b goes first
    assert [r.name for r in evicted] == ["b"]
    assert store.disk_usage() < before
    evicted = store.evict_to(0, {recs["a"].digest})
    assert [r.name for r in evicted] == ["c"] and [r.name for r in store.list()] == ["a"]


def test_rootfs_base_and_box_disks(tmp_path: Path, layouts: Path) -> None:
    store = ImageStore(Home(tmp_path / "home"))
    r = store.import_path(layouts / "a", tag="a")
    base = store.rootfs_base(r)
    out = subprocess.run(["debugfs", "-R", "cat /etc/passwd", str(base)], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("root:x:0:0")
    label = subprocess.run(["e2label", str(base)], capture_output=True, text=True, check=True)
    assert label.stdout.strip() == "a3sroot"
    subprocess.run(["e2fsck", "-fn", str(base)], check=True, capture_output=True)  # consistent fs
    ls = subprocess.run(["debugfs", "-R", "stat /bin/busybox", str(base)], capture_output=True,
                        text=True, check=True).stdout
    assert "Mode:  0755" in ls and "User:     0   Group:     0" in ls
    inode = base.stat().st_ino
    disks = [store.create_box_disk(r, tmp_path / "boxes" / f"{i}.qcow2") for i in range(2)]
    assert store.rootfs_base(r).stat().st_ino == inode  # built once, reused
    for d in disks:
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(d)],
                                         capture_output=True, check=True).stdout)
        assert (info["format"], info["backing-filename"]) == ("qcow2", str(base))
        assert d.stat().st_blocks * 512 < 5 << 20
        subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", str(d), str(base)],
                       check=True)  # the new disk shows exactly the base
    store.remove_box_disk(disks[0])
    assert not disks[0].exists() and disks[1].exists()
    assert sorted(p.name for p in (tmp_path / "boxes").iterdir()) == ["1.qcow2"]


def test_concurrent_imports_keep_every_record(tmp_path: Path, layouts: Path) -> None:
    home = Home(tmp_path)
    errors: list[BaseException] = []

    def run(n: str) -> None:
        try:
            ImageStore(home).import_path(layouts / n, tag=n)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [r.name for r in ImageStore(home).list()] == ["a", "b", "c"]


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["box", "--home", str(home), *args], capture_output=True, text=True)


def test_cli(tmp_path: Path, layouts: Path) -> None:
    home = tmp_path / "home"
    p = cli(home, "image", "import", str(layouts / "a"), "--tag", "hello")
    assert p.returncode == 0 and p.stdout.startswith("hello sha256:")
    rows = json.loads(cli(home, "-o", "json", "image", "ls").stdout)
    assert [(r["name"], r["digest"][:7]) for r in rows] == [("hello", "sha256:")]
    assert cli(home, "image", "ls").stdout.splitlines()[0].split() == ["NAME", "DIGEST", "SIZE", "LAST", "USED"]
    bad = cli(home, "image", "pull", "Not/Valid")
    assert (bad.returncode, bad.stderr.strip()) == (1, "error: image Not/Valid: invalid image reference: "
                                                       "repository component 'Not' must be lowercase "
                                                       "letters, digits and separators")
    bad = cli(home, "image", "rm", "nope")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert cli(home, "image", "rm", "hello").stdout == "removed hello\n"
    assert cli(home, "image", "prune").returncode == 0
    assert list((home / "images" / "blobs" / "sha256").iterdir()) == []
    assert list((home / "images" / "unpacked").iterdir()) == []


def test_cli_prune_max_size(tmp_path: Path, layouts: Path) -> None:
    home = tmp_path / "home"
    for n in ("a", "c"):
        assert cli(home, "image", "import", str(layouts / n), "--tag", n).returncode == 0
    assert cli(home, "image", "prune", "--max-size", "1Ti").stdout == ""
    assert cli(home, "image", "prune", "--max-size", "0").stdout == "removed a\nremoved c\n"
    bad = cli(home, "image", "prune", "--max-size", "lots")
    assert bad.returncode == 2 and "'lots' is not a size like 10Gi or 500M" in bad.stderr


def test_import_oci_layout_tarball(tmp_path: Path, layouts: Path) -> None:
    tar = tmp_path / "layout.tar"
    with tarfile.open(tar, "w") as t:
        t.add(layouts / "a", arcname=".")
    store = ImageStore(Home(tmp_path / "home"))
    from_dir = store.import_path(layouts / "a", tag="dir")
    from_tar = store.import_path(tar, tag="tar")
    assert from_tar.digest == from_dir.digest and from_tar.blobs == from_dir.blobs
