"""`box plan` as CI uses it: the stable text, -o json, and --detailed-exitcode
(0 no changes, 2 changes, 1 any error, a Boxfile error included)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BOXFILE = """apiVersion: box.a3s.dev/v1
project: demo
images:
  base: {ref: "localhost:5000/a3s/busybox:1.35"}
boxes:
  db:
    image: base
    resources: {vcpus: 1, memory: 128Mi}
  coder:
    image: base
    depends_on: [db]
    resources: {vcpus: 2, memory: 512Mi}
pools:
  coders: {box: coder, min_ready: 2, max: 8}
"""

GOLDEN = """Project "demo":
  + image base               pull: localhost:5000/a3s/busybox:1.35
  + box db                   create: image base, 1 vcpu, 128Mi
  + pool coders              create: box coder, min_ready 2, max 8

Plan: 3 to create, 0 to recreate, 0 to update, 0 to delete, 1 unchanged.
"""


def box(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "a3s_box.cli", *args], capture_output=True,
                          text=True, env={**os.environ, "A3S_BOX_HOME": str(home)})


def test_plan_text_is_stable(tmp_path: Path) -> None:
    f = tmp_path / "Boxfile.yaml"
    f.write_text(BOXFILE)
    r = box(tmp_path / "home", "plan", "-f", str(f))
    assert (r.returncode, r.stdout) == (0, GOLDEN)  # coder is the pool's template: not booted


def test_plan_json_and_detailed_exitcode(tmp_path: Path) -> None:
    f = tmp_path / "Boxfile.yaml"
    f.write_text(BOXFILE)
    r = box(tmp_path / "home", "plan", "-f", str(f), "-o", "json", "--detailed-exitcode")
    assert r.returncode == 2
    plan = json.loads(r.stdout)
    assert plan["project"] == "demo" and plan["changes"] is True
    assert [(a["op"], a["kind"], a["name"]) for a in plan["actions"]] == [
        ("pull", "image", "base"), ("create", "box", "db"), ("noop", "box", "coder"),
        ("create", "pool", "coders")]


def test_an_invalid_boxfile_is_exit_1_with_detailed_exitcode_and_2_without(tmp_path: Path) -> None:
    f = tmp_path / "Boxfile.yaml"
    f.write_text(BOXFILE.replace("image: base\n    depends_on", "image: bsae\n    depends_on"))
    r = box(tmp_path / "home", "plan", "-f", str(f), "--detailed-exitcode")
    assert r.returncode == 1 and f"{f}:10:12: boxes.coder.image: unknown image 'bsae'" in r.stderr
    assert box(tmp_path / "home", "plan", "-f", str(f)).returncode == 2
