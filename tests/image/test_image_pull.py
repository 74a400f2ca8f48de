"""Pulling from a real docker-registry (Debian's), with faults injected by a proxy in front."""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from a3s_box.errors import ImageError, RegistryError
from a3s_box.home import Home
from a3s_box.image import ImageStore
from a3s_box.image.blobs import sha256_file
from tests.image.faultproxy import FaultProxy
from tests.registry import Entry, Registry, busybox_layout

pytestmark = pytest.mark.registry

CONFIG = {"Env": ["PATH=/bin", "MODE=test"], "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"],
          "WorkingDir": "/srv", "User": "1000:1000",
          "Labels": {"dev.a3s.box.agent.command": '["coder"]', "other": "x"}}


@dataclass(frozen=True)
class Pushed:
    base_digest: str
    two_digest: str
    amd64_digest: str
    arm64_digest: str


def multi_arch_layout(tmp: Path) -> tuple[Path, str, str]:
    """One layout whose index lists an amd64 and an arm64 image (files /arch differ)."""
    out = tmp / "multi"
    digests = {}
    for arch in ("amd64", "arm64"):
        busybox_layout(tmp / arch, [[Entry("arch", data=arch.encode())]])
        idx = json.loads((tmp / arch / "index.json").read_text())["manifests"][0]
        digests[arch] = idx
    shutil.copytree(tmp / "amd64", out)
    for p in (tmp / "arm64" / "blobs" / "sha256").iterdir():
        shutil.copy(p, out / "blobs" / "sha256" / p.name)
    manifests = [{**digests[a], "platform": {"os": "linux", "architecture": a}, "annotations": {}}
                 for a in ("arm64", "amd64")]
    inner = json.dumps({"schemaVersion": 2, "manifests": manifests,
                        "mediaType": "application/vnd.oci.image.index.v1+json"}).encode()
    digest = hashlib.sha256(inner).hexdigest()
    (out / "blobs" / "sha256" / digest).write_bytes(inner)
    (out / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": f"sha256:{digest}",
         "size": len(inner), "annotations": {"org.opencontainers.image.ref.name": "1"}}]}))
    return out, digests["amd64"]["digest"], digests["arm64"]["digest"]


@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    tmp = tmp_path_factory.mktemp("images")
    base = busybox_layout(tmp / "base", config=CONFIG)
    two = busybox_layout(tmp / "two", [[Entry("srv", "dir", mode=0o755),
                                        Entry("srv/data", data=b"layer two " * 1000)]])
    registry.push_oci_layout(tmp / "base", "test/base:1")
    registry.push_oci_layout(tmp / "two", "test/two:1")
    multi, amd, arm = multi_arch_layout(tmp)
    subprocess.run(["skopeo", "copy", "--quiet", "--all", "--dest-tls-verify=false",
                    f"oci:{multi}:1", f"docker://{registry.host}/test/multi:1"],
                   check=True, capture_output=True)
    return Pushed(base, two, amd, arm)


def new_store(tmp: Path, **kw: Any) -> ImageStore:
    return ImageStore(Home(tmp / "home"), retries=3, backoff=0.001, **kw)


def final_blobs(store: ImageStore) -> set[str]:
    """The blobs under their final names, each checked to hash to its name."""
    blobs = set(store.blobs.all())
    for b in blobs:
        assert sha256_file(store.blobs.path(b)) == b
    return blobs


def test_pull_by_tag_keeps_config(registry: Registry, pushed: Pushed, tmp_path: Path) -> None:
    store = new_store(tmp_path)
    r = store.pull(registry.ref("test/base:1"))
    assert (r.name, r.digest) == (f"{registry.host}/test/base:1", pushed.base_digest)
    c = r.config
    assert (c.env, c.argv, c.workdir, c.user) == (("PATH=/bin", "MODE=test"),
                                                  ["/bin/sh", "-c", "echo hi"], "/srv", "1000:1000")
    assert c.box_labels() == {"dev.a3s.box.agent.command": '["coder"]'}
    assert final_blobs(store) == set(r.blobs)
    for key in (r.name, pushed.base_digest, pushed.base_digest[:19], f"{registry.host}/test/base:1"):
        assert store.get(key) == r
    assert (store.unpacked_dir(r) / "bin" / "busybox").is_file()


def test_pull_by_digest(registry: Registry, pushed: Pushed, tmp_path: Path) -> None:
    r = new_store(tmp_path).pull(registry.ref(f"test/two@{pushed.two_digest}"))
    assert r.digest == pushed.two_digest
    assert r.name.endswith(f"test/two@{pushed.two_digest}")


def test_index_picks_host_platform(registry: Registry, pushed: Pushed, tmp_path: Path) -> None:
    store = new_store(tmp_path)
    r = store.pull(registry.ref("test/multi:1"))
    assert r.digest == pushed.amd64_digest  # this machine is linux/amd64
    assert (store.unpacked_dir(r) / "arch").read_bytes() == b"amd64"


def test_shared_layers_are_fetched_and_stored_once(proxy: FaultProxy, pushed: Pushed,
                                                   tmp_path: Path) -> None:
    faults = proxy.reset()
    store = new_store(tmp_path)
    a = store.pull(f"{proxy.host}/test/base:1")
    b = store.pull(f"{proxy.host}/test/two:1")
    shared = set(a.layers) & set(b.layers)
    assert len(shared) == 1
    fetched = [p for p, _ in faults.seen if "/blobs/" in p and p.endswith(next(iter(shared)))]
    assert len(fetched) == 1
    assert final_blobs(store) == set(a.blobs) | set(b.blobs)


def test_missing_tag(registry: Registry, pushed: Pushed, tmp_path: Path) -> None:
    store = new_store(tmp_path)
    ref = registry.ref("test/base:nope")
    with pytest.raises(RegistryError) as e:
        store.pull(ref)
    assert e.value.status == 404 and e.value.ref == ref
    assert "not found" in str(e.value)
    assert store.list() == []


def test_transient_500s_are_retried(proxy: FaultProxy, pushed: Pushed, tmp_path: Path) -> None:
    faults = proxy.reset()
    faults.fail_500 = 2
    r = new_store(tmp_path).pull(f"{proxy.host}/test/base:1")
    assert r.digest == pushed.base_digest and faults.fail_500 == 0


def test_persistent_500_then_recovery(proxy: FaultProxy, pushed: Pushed, tmp_path: Path) -> None:
    faults = proxy.reset()
    faults.fail_500, faults.path_has = 1000, "/blobs/"
    store = new_store(tmp_path)
    with pytest.raises(RegistryError) as e:
        store.pull(f"{proxy.host}/test/base:1")
    assert e.value.status == 500 and "failed after 4 attempts" in str(e.value)
    assert store.list() == []
    proxy.reset()
    assert store.pull(f"{proxy.host}/test/base:1").digest == pushed.base_digest


def test_dropped_connection_resumes(proxy: FaultProxy, pushed: Pushed, tmp_path: Path) -> None:
    faults = proxy.reset()
    faults.cut_blobs = 1
    store = new_store(tmp_path)
    r = store.pull(f"{proxy.host}/test/two:1")
    assert r.digest == pushed.two_digest
    ranges = [h["range"] for p, h in faults.seen if "/blobs/" in p and "range" in h]
    assert len(ranges) == 1 and ranges[0].startswith("bytes=") and ranges[0] != "bytes=0-"
    assert final_blobs(store) == set(r.blobs)


def test_always_truncated_fails_cleanly(proxy: FaultProxy, pushed: Pushed, tmp_path: Path) -> None:
    faults = proxy.reset()
    faults.cut_blobs = 1000
    store = new_store(tmp_path)
    with pytest.raises(RegistryError, match="connection dropped|truncated"):
        store.pull(f"{proxy.host}/test/base:1")
    assert store.list() == [] and pushed.base_digest not in final_blobs(store)
    proxy.reset()
    assert store.pull(f"{proxy.host}/test/base:1").digest == pushed.base_digest


def test_corrupt_blob_is_not_kept(proxy: FaultProxy, pushed: Pushed, tmp_path: Path) -> None:
    faults = proxy.reset()
    faults.corrupt_blobs = True
    store = new_store(tmp_path)
    with pytest.raises(ImageError, match="does not match its digest"):
        store.pull(f"{proxy.host}/test/base:1")
    assert final_blobs(store) == set() and store.list() == []
    assert list((store.root / "tmp").iterdir()) == []
    proxy.reset()
    assert store.pull(f"{proxy.host}/test/base:1").digest == pushed.base_digest


def test_wrong_manifest_media_type(proxy: FaultProxy, pushed: Pushed, tmp_path: Path) -> None:
    faults = proxy.reset()
    body = json.dumps({"schemaVersion": 1, "name": "test/base", "tag": "1", "fsLayers": []}).encode()
    faults.manifest = (body, "application/vnd.docker.distribution.manifest.v1+prettyjws")
    ref = f"{proxy.host}/test/base:1"
    with pytest.raises(ImageError) as e:
        new_store(tmp_path).pull(ref)
    assert str(e.value).startswith(f"image {ref}: unsupported manifest media type "
                                   "'application/vnd.docker.distribution.manifest.v1+prettyjws'")


def test_bearer_token_flow_with_docker_config(proxy: FaultProxy, pushed: Pushed,
                                              tmp_path: Path) -> None:
    faults = proxy.reset()
    faults.token_creds = ("alice", "s3cret")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {proxy.host: {
        "auth": base64.b64encode(b"alice:s3cret").decode()}}}))
    r = new_store(tmp_path / "a", docker_config=cfg).pull(f"{proxy.host}/test/base:1")
    assert r.digest == pushed.base_digest
    assert any(p.startswith("/token?") and "scope=repository" in p for p, _ in faults.seen)
    with pytest.raises(RegistryError) as e:  # no credentials: the token service refuses
        new_store(tmp_path / "b", docker_config=tmp_path / "none.json").pull(
            f"{proxy.host}/test/base:1")
    assert e.value.status == 401


def test_concurrent_pulls_of_one_image(registry: Registry, pushed: Pushed, tmp_path: Path) -> None:
    """Two pulls share the partial files: the per-blob lock keeps them from interleaving."""
    home = tmp_path / "home"
    results: list[object] = []

    def run() -> None:
        try:
            results.append(ImageStore(Home(home), backoff=0.001).pull(registry.ref("test/two:1")).digest)
        except Exception as e:  # reported by the assert below
            results.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [pushed.two_digest] * 3
    assert final_blobs(ImageStore(Home(home))) == set(ImageStore(Home(home)).list()[0].blobs)


def test_hostile_image_from_registry(registry: Registry, pushed: Pushed, tmp_path: Path) -> None:
    """A symlink planted in one layer and a hardlink out in the next: refused, nothing kept."""
    busybox_layout(tmp_path / "evil", [[Entry("planted", "symlink", link="/../../..")],
                                       [Entry("x", "hardlink", link="../../etc/passwd")]])
    registry.push_oci_layout(tmp_path / "evil", "test/evil:1")
    store = new_store(tmp_path)
    with pytest.raises(ImageError, match="'../../etc/passwd' points outside the root"):
        store.pull(registry.ref("test/evil:1"))
    assert store.list() == [] and final_blobs(store) == set()
    assert not (store.root / "unpacked").exists() or list((store.root / "unpacked").iterdir()) == []
    assert store.pull(registry.ref("test/base:1")).digest == pushed.base_digest


def test_ensure_pulls_once_then_stays_offline(proxy: FaultProxy, pushed: Pushed,
                                               tmp_path: Path) -> None:
    faults = proxy.reset()
    store = new_store(tmp_path)
    ref = f"{proxy.host}/test/base:1"
    first = store.ensure(ref, progress=True)  # not a terminal here: no bars, no output
    assert first.digest == pushed.base_digest
    faults.fail_500, faults.path_has = 1000, "/"  # any request from now on would fail
    seen = len(faults.seen)
    again = store.ensure(ref)
    assert again.digest == first.digest and again.last_used >= first.last_used
    assert len(faults.seen) == seen  # no request at all
