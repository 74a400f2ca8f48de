"""A real local registry for tests, and offline-built OCI test images.

Use from any test module:

    from tests.registry import registry, busybox_layout   # noqa: F401  (fixture import)

    def test_x(registry, tmp_path):
        busybox_layout(tmp_path / "img")
        registry.push_oci_layout(tmp_path / "img", "demo/busybox:1")
        ref = f"{registry.host}/demo/busybox:1"

`registry` is session-scoped: Debian's `docker-registry` (distribution v2) on
127.0.0.1 on a free port, storage in a temp folder, config generated here. Images
are built offline: layer tars written with tarfile, config/manifest/index.json
written per the OCI image spec, pushed with `skopeo copy`.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "ls", "cat", "echo", "sleep", "env", "mkdir", "rm", "true", "false", "id",
           "uname", "hostname", "mount", "ps", "kill", "stat", "readlink", "sha256sum", "test")
MTIME = 1700000000


@dataclass(frozen=True)
class Entry:
    """One tar member: kind is file, dir, symlink, hardlink, char, block or fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


_KINDS = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


def layer_tar(entries: Sequence[Entry]) -> bytes:
    """An uncompressed layer tar, byte-for-byte reproducible."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _KINDS[e.kind]
            info.mode, info.uid, info.gid, info.mtime = e.mode, e.uid, e.gid, MTIME
            info.uname = info.gname = "root" if e.uid == 0 else ""
            info.linkname = e.link
            if e.kind in ("char", "block"):
                info.devmajor, info.devminor = 1, 3
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return raw.getvalue()


def busybox_entries() -> list[Entry]:
    entries = [Entry(d, "dir", mode=0o1777 if d == "tmp" else 0o755)
               for d in ("bin", "etc", "tmp", "root", "usr", "usr/bin")]
    entries.append(Entry("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755))
    entries += [Entry(f"bin/{a}", "symlink", link="busybox", mode=0o777) for a in APPLETS]
    entries += [Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"),
                Entry("etc/group", data=b"root:x:0:\n")]
    return entries


def _blob(out: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (out / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_oci_layout(out: Path, layers: Sequence[bytes], *, config: dict[str, Any] | None = None,
                     tag: str = "latest", compress: bool = True, arch: str = "amd64") -> str:
    """An OCI image layout at `out` from uncompressed layer tars; returns the manifest digest."""
    if out.exists():
        shutil.rmtree(out)
    (out / "blobs" / "sha256").mkdir(parents=True)
    descs, diff_ids = [], []
    for tar in layers:
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        body = gzip.compress(tar, compresslevel=1, mtime=0) if compress else tar
        mt = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")
        descs.append({"mediaType": mt, **_blob(out, body)})
    cfg = json.dumps({
        "architecture": arch, "os": "linux",
        "config": config if config is not None else {"Env": ["PATH=/bin:/usr/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(out, cfg)},
        "layers": descs}, sort_keys=True).encode()
    m = _blob(out, manifest)
    (out / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (out / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **m,
                       "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return str(m["digest"])


def busybox_layout(out: Path, extra: Sequence[Sequence[Entry]] = (), *,
                   config: dict[str, Any] | None = None, tag: str = "latest") -> str:
    """A small busybox-static image (base layer + `extra` layers); returns the manifest digest."""
    return write_oci_layout(out, [layer_tar(busybox_entries())] + [layer_tar(e) for e in extra],
                            config=config, tag=tag)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    host: str  # "127.0.0.1:PORT"
    storage: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def push_oci_layout(self, path: Path, ref: str) -> None:
        """Push an OCI layout (its single image) as host/REF, e.g. ref="demo/busybox:1"."""
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                        f"oci:{path}", f"docker://{self.host}/{ref}"],
                       check=True, capture_output=True)

    def ref(self, name: str) -> str:
        return f"{self.host}/{name}"


def start_registry(storage: Path) -> Registry:
    port = free_port()
    storage.mkdir(parents=True, exist_ok=True)
    conf = storage.parent / f"registry-{port}.yml"
    conf.write_text(
        "version: 0.1\n"
        "log: {level: error, accesslog: {disabled: true}}\n"
        f"storage: {{filesystem: {{rootdirectory: {storage}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reg = Registry(f"127.0.0.1:{port}", storage, proc)
    for _ in range(200):  # ready when /v2/ answers; give up after ~10 s of polling
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"docker-registry exited: {err}")
        try:
            if httpx.get(f"{reg.url}/v2/", timeout=1).status_code == 200:
                return reg
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    stop_registry(reg)
    raise RuntimeError("docker-registry did not come up")


def stop_registry(reg: Registry) -> None:
    if reg.proc is not None:
        reg.proc.terminate()
        try:
            reg.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            reg.proc.kill()
            reg.proc.wait()
        if reg.proc.stderr:
            reg.proc.stderr.close()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if not shutil.which("docker-registry") or not shutil.which("skopeo"):
        pytest.fail("docker-registry and skopeo must be installed (apt-get install docker-registry skopeo)")
    reg = start_registry(tmp_path_factory.mktemp("registry") / "storage")
    try:
        yield reg
    finally:
        stop_registry(reg)
