"""An image's label defaults fill what a box leaves unset, the Boxfile wins for what it
says, and the plan names what came from the image; a build image's plan line says how
much the cache has (a RUN-free build: no VM needed)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from a3s_box.boxfile.model import BoxDef
from a3s_box.orchestrator.desired import with_image_defaults

DEFAULTS = {"namespaces": {"agent": {"command": ["agent"]}}, "resources": {"vcpus": 2, "memory": "512Mi"},
            "network": {"mode": "allowlist", "egress": ["api.openai.com"]}}


def test_the_boxfile_wins_where_it_says_anything() -> None:
    box = BoxDef.model_validate({"image": "x", "resources": {"memory": "128Mi"}})
    merged, taken = with_image_defaults(box, DEFAULTS)
    assert taken == ("namespaces.agent.command", "resources.vcpus", "network.egress")
    assert merged.namespaces.agent.command == ["agent"] and merged.resources.vcpus == 2
    assert merged.resources.memory == 128 << 20  # the Boxfile's
    assert merged.network.egress == ["api.openai.com"]
    own = BoxDef.model_validate({"image": "x", "namespaces": {"agent": {"command": ["mine"]}},
                                 "network": {"mode": "none"}})
    merged, taken = with_image_defaults(own, DEFAULTS)
    assert merged.namespaces.agent.command == ["mine"] and merged.network.mode == "none"
    assert taken == ("resources.memory", "resources.vcpus")
    assert with_image_defaults(box, {}) == (box, ())


def _box(home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "a3s_box.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "A3S_BOX_HOME": str(home)}, timeout=120)


def test_plan_shows_the_build_and_the_label_defaults_and_refuses_a_bad_label(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app/agent.sh").write_text("#!/bin/sh\nexec sleep 1d\n")
    df = tmp_path / "app/Dockerfile"
    df.write_text("FROM scratch\nCOPY agent.sh /agent.sh\n"
                  "LABEL dev.a3s.box.agent.command='[\"/agent.sh\"]' dev.a3s.box.resources.vcpus=2\n")
    (tmp_path / "Boxfile.yaml").write_text("""apiVersion: box.a3s.dev/v1
project: lbl
images:
  app: {build: {context: ./app}}
boxes:
  coder: {image: app, resources: {memory: 128Mi}}
""")
    home = tmp_path / "home"
    r = _box(home, tmp_path, "plan")
    assert r.returncode == 0, r.stderr
    assert "  + image app                build: ./app (0 of 2 steps cached)\n" in r.stdout
    r = _box(home, tmp_path, "build")
    assert r.returncode == 0, r.stderr
    assert "built app: localhost/lbl-app:latest sha256:" in r.stdout and "(0 of 2 steps cached)" in r.stdout
    assert "[0 2/2] LABEL " in r.stderr
    r = _box(home, tmp_path, "plan")
    assert "  + box coder                create: image app, 2 vcpu, 128Mi (from the image's labels: " \
           "namespaces.agent.command, resources.vcpus)" in r.stdout, r.stdout
    assert "image app" in r.stdout and "build:" not in r.stdout  # built: nothing to do for it
    df.write_text("FROM scratch\nLABEL dev.a3s.box.resources.vcpus=lots\n")
    assert _box(home, tmp_path, "build").returncode == 0  # a label is only data to the build
    r = _box(home, tmp_path, "plan")
    assert r.returncode == 1 and "error: image localhost/lbl-app:latest: label dev.a3s.box.resources.vcpus: " \
        "'lots' is not a whole number" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
