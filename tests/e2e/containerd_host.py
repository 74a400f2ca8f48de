"""Debian's containerd on a private socket, root and state in a temporary folder, with
a3s-box's shim on its PATH (shared by the ctr and the CRI tests)."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def containerd(d: Path, a3s_home: Path, extra_config: str = "",
               extra_env: dict[str, str] | None = None) -> Iterator[Path]:
    """Run containerd in D (its shims get EXTRA_ENV too); yields its socket."""
    if shutil.which("containerd") is None:
        pytest.fail("containerd is missing: scripts/setup.sh --test installs Debian's containerd")
    sock = d / "containerd.sock"
    (d / "config.toml").write_text(f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
                                   f'[grpc]\n  address = "{sock}"\n{extra_config}')
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "A3S_BOX_HOME": str(a3s_home), "A3S_BOX_SHIM_RUN": str(d / "shims"), **(extra_env or {})}
    with open(d / "containerd.log", "wb") as log:
        daemon = subprocess.Popen(["containerd", "--config", str(d / "config.toml")], env=env,
                                  stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield sock
    finally:
        daemon.terminate()
        daemon.wait(20)


def import_image(sock: Path, layout: Path, name: str, namespace: str = "default") -> None:
    """An OCI layout folder into containerd's image store as NAME (a full reference:
    the layout's ref.name annotation says it, so the import names nothing else)."""
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        m.setdefault("annotations", {})["org.opencontainers.image.ref.name"] = name
    data = json.dumps(index).encode()
    tar_path = layout.with_name(layout.name + ".tar")
    with tarfile.open(tar_path, "w") as t:
        for p in sorted(layout.iterdir()):
            if p.name != "index.json":
                t.add(p, arcname=p.name)
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    subprocess.run(["ctr", "-a", str(sock), "-n", namespace, "image", "import", str(tar_path)], check=True,
                   capture_output=True, timeout=120)
