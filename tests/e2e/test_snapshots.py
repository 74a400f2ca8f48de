"""Boxes start as clones of a snapshot template (real VMs): clones do not share RNG state
or files, a different size uses a different template, a broken template falls back to a
cold boot that says so, and a restart of a clone boots cold from its own disk."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.conftest import BoxCli, boxfile

pytestmark = pytest.mark.vm

TWO = """project: snaps
boxes:
  c1:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
  c2:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
"""


def _boot(box: BoxCli) -> dict[str, str]:
    return {b["name"]: b["boot"] for b in box("ps", "-o", "json", check=True).json()}


def test_clones_of_one_template(box: BoxCli, hello_image: Path, tmp_path: Path) -> None:
    f = boxfile(tmp_path, hello_image, TWO)
    box("apply", "-f", str(f), check=True)
    boots = _boot(box)
    assert boots["c1"].startswith("snapshot ") and boots["c1"] == boots["c2"], boots
    outs = [box("exec", n, "--", "sh", "-c", "head -c 32 /dev/urandom | md5sum; date +%s", check=True).out.split()
            for n in ("c1", "c2")]
    assert outs[0][0] != outs[1][0]  # reseeded: no shared RNG state
    assert all(abs(int(o[-1]) - time.time()) < 3 for o in outs)  # the clock is now, not the template's
    box("exec", "c1", "--", "sh", "-c", "echo mine > /root/f && sync", check=True)
    assert box("exec", "c2", "--", "cat", "/root/f").code != 0
    # a restart boots cold from the clone's own disk, which kept the file
    box("stop", "c1", check=True)
    box("start", "c1", check=True)
    assert box("exec", "c1", "--", "cat", "/root/f", check=True).out == "mine\n"
    assert _boot(box)["c1"] == "cold"
    # another memory size: another template
    big = tmp_path / "big.yaml"
    big.write_text("boxes:\n  c2:\n    resources: {memory: 320Mi}\n")
    box("apply", "-f", str(f), "-f", str(big), check=True)
    assert _boot(box)["c2"].startswith("snapshot ") and _boot(box)["c2"] != boots["c2"]
    keys = box("snapshot", "ls", "-o", "json", check=True).json()
    assert len({k["key"] for k in keys}) >= 2
    box("delete", "-f", str(f), check=True)


def test_a_broken_template_falls_back_to_a_cold_boot(box: BoxCli, hello_image: Path, tmp_path: Path) -> None:
    f = boxfile(tmp_path, hello_image, TWO.replace("  c2:\n", "  c3:\n").replace("snaps", "broken"))
    box("apply", "-f", str(f), check=True)
    key = _boot(box)["c1"].split()[1]
    box("delete", "-f", str(f), check=True)
    state = next((box.home / "cache" / "snapshots").glob(f"{key}*/state"))
    state.write_bytes(b"\0" * 4096)  # corrupted
    box("apply", "-f", str(f), check=True)
    boots = _boot(box)
    assert all(boots[n].startswith("cold (snapshot restore failed") for n in ("c1", "c3")), boots
    assert box("exec", "c1", "--", "true").code == 0
    box("delete", "-f", str(f), check=True)
