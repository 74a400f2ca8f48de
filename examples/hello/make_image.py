"""Build the demo's OCI image offline: Debian's busybox-static in an OCI image layout.

No registry and no Docker needed: the layers are tar files written here, the config,
manifest and index.json follow the OCI image spec. Two layers, the second deleting a
file of the first with a whiteout, so the demo shows layers being applied.

    python3 examples/hello/make_image.py [OUT_DIR]     (default: examples/hello/image)
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = ["sh", "ls", "cat", "echo", "sleep", "ps", "uname", "hostname", "id", "env", "mkdir",
           "rm", "true", "false", "grep", "head", "tail", "wc", "mount", "kill", "touch", "date",
           "seq", "sync", "sed", "awk", "find", "stat", "readlink", "ln", "cp", "mv", "chmod",
           "dd", "top", "free", "df", "du", "vi", "less", "tr", "cut", "sort", "uniq", "xargs",
           "test", "[", "which", "whoami", "pwd", "printf", "basename", "dirname", "nc", "wget",
           "ip", "ifconfig", "ping", "poweroff", "reboot", "nproc", "md5sum", "sha256sum", "tee"]


def _entry(tar: tarfile.TarFile, name: str, *, data: bytes | None = None, mode: int = 0o755,
           kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 1700000000  # fixed: the same input gives the same digest
    info.uname = info.gname = "root"
    if link:
        info.linkname = link
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def _layer(build) -> bytes:  # type: ignore[no-untyped-def]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    return raw.getvalue()


def _blob(out: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (out / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def base_layer(tar: tarfile.TarFile) -> None:
    for d in ("bin", "etc", "tmp", "root", "var", "usr", "usr/bin", "app"):
        _entry(tar, d, kind=tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
    _entry(tar, "bin/busybox", data=BUSYBOX.read_bytes())
    for applet in APPLETS:
        _entry(tar, f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
    _entry(tar, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n", mode=0o644)
    _entry(tar, "etc/group", data=b"root:x:0:\n", mode=0o644)
    _entry(tar, "etc/draft.txt", data=b"removed by the next layer\n", mode=0o644)


def app_layer(tar: tarfile.TarFile) -> None:
    _entry(tar, "app", kind=tarfile.DIRTYPE)
    _entry(tar, "app/agent.sh", data=(
        b"#!/bin/sh\n"
        b"# The demo agent: says hello, then works in a loop.\n"
        b"echo \"agent: hello from $(hostname), kernel $(uname -r)\"\n"
        b"i=0\n"
        b"while :; do i=$((i+1)); echo \"agent: tick $i\" > /tmp/agent-tick; sleep 5; done\n"))
    _entry(tar, "etc/.wh.draft.txt", data=b"", mode=0o644)
    _entry(tar, "etc/motd", data=b"Welcome to an a3s-box microVM.\n", mode=0o644)


def build(out: Path, extra_layers=()) -> str:  # type: ignore[no-untyped-def]
    """The image; EXTRA_LAYERS (functions filling a tarfile) go on top (tests add tools)."""
    if out.exists():
        shutil.rmtree(out)
    (out / "blobs" / "sha256").mkdir(parents=True)
    layers, diff_ids = [], []
    for build_layer in (base_layer, app_layer, *extra_layers):
        tar = _layer(build_layer)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        gz = gzip.compress(tar, mtime=0)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": _blob(out, gz), "size": len(gz)})
    config = json.dumps({
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1700000000)),
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello"],
                   "Entrypoint": ["/bin/sh"], "Cmd": ["/app/agent.sh"], "WorkingDir": "/app",
                   "Labels": {"org.a3s.box.example": "hello"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "busybox-static"}, {"created_by": "agent"}]
        + [{"created_by": getattr(f, "__name__", "extra")} for f in extra_layers],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _blob(out, config), "size": len(config)},
        "layers": layers,
    }, sort_keys=True).encode()
    mdigest = _blob(out, manifest)
    (out / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (out / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": mdigest, "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
    }, sort_keys=True))
    return mdigest


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "image"
    print(f"{target}: {build(target)}")
