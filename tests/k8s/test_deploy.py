"""deploy/kubernetes/install.sh (what the DaemonSet runs on a node): the shim linked
where containerd finds it, and the runtime added to containerd's config once, in a form
containerd itself parses (`containerd config dump`, Debian's containerd). Setup and the
restart are skipped here (this host is the test's, not a node)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_DEFAULT = """version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"""


@pytest.mark.parametrize("existing", [None, DEBIAN_DEFAULT])
def test_install_adds_the_runtime_once_in_a_config_containerd_reads(tmp_path: Path, existing: str | None) -> None:
    config = tmp_path / "etc" / "config.toml"
    if existing is not None:
        config.parent.mkdir()
        config.write_text(existing)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "containerd-shim-a3sbox-v2").write_text("#!/bin/sh\n")
    env = {**os.environ, "A3S_SKIP_SETUP": "1", "A3S_NO_RESTART": "1", "CONTAINERD_CONFIG": str(config),
           "A3S_BOX_VENV": str(venv), "A3S_BOX_BIN_DIR": str(tmp_path / "bin")}
    for _ in range(2):  # a second run changes nothing
        r = subprocess.run(["sh", str(ROOT / "deploy/kubernetes/install.sh")], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    assert config.read_text().count("runtimes.a3sbox]") == 1
    assert os.readlink(tmp_path / "bin" / "containerd-shim-a3sbox-v2") == str(venv / "bin/containerd-shim-a3sbox-v2")
    if shutil.which("containerd") is None:
        pytest.fail("containerd is missing: scripts/setup.sh --test installs Debian's containerd")
    dump = subprocess.run(["containerd", "--config", str(config), "config", "dump"], capture_output=True,
                          text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    section = dump.stdout.split('[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.a3sbox]', 1)
    assert len(section) == 2 and 'runtime_type = "io.containerd.a3sbox.v2"' in section[1].split("\n[", 1)[0]
