"""What `box apply` says of each outcome: every op the plan has and every status the
executor reports has a line (a new one without a line fails here), and a build inside
apply is reported like any other outcome, through the real CLI (FROM scratch + COPY:
a build with no RUN step, so no VM is needed)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from a3s_box.cli.box_cmds import _outcome_line
from a3s_box.orchestrator.executor import STATUSES, BuildSteps, Outcome, Status
from a3s_box.orchestrator.plan import Action, Op

HEAD = "apiVersion: box.a3s.dev/v1\n"


@pytest.mark.parametrize("op", list(Op))
@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("kind", ["image", "box", "pool"])
def test_every_outcome_has_a_line(op: Op, status: Status, kind: str) -> None:
    build = BuildSteps(5, 7) if op is Op.BUILD else None
    line = _outcome_line(Outcome(Action(op, kind, "x"), status, "why", 12.34, build))
    assert line.split()[1:3] == [kind, "x:"], line


def test_a_build_line_says_how_long_and_what_the_cache_gave() -> None:
    out = Outcome(Action(Op.BUILD, "image", "app"), "ok", "sha256:" + "a" * 64, 12.34, BuildSteps(5, 7))
    assert _outcome_line(out) == "✓ image app: built in 12.3s (5 of 7 steps cached)"
    assert out.to_json()["build"] == {"cached": 5, "total": 7}
    pulled = Outcome(Action(Op.PULL, "image", "base"), "ok", "sha256:" + "b" * 64, 1.0)
    assert _outcome_line(pulled) == "✓ image base: pulled sha256:bbbbbbbbbbbb in 1.0s"
    assert "build" not in pulled.to_json()


def _box(home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "a3s_box.cli", "--home", str(home), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_apply_reports_a_build_and_a_failed_build_is_located(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "hello.txt").write_text("hello\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\nLABEL a=b\n")
    (tmp_path / "Boxfile.yaml").write_text(HEAD + "project: q\nimages: {app: {build: {context: ./ctx}}}\n")
    home = tmp_path / "home"
    r = _box(home, tmp_path, "apply")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert re.search(r"^✓ image app: built( in \d+\.\ds)? \(0 of 2 steps cached\)$", r.stderr, re.M), r.stderr
    assert r.stdout == 'Project "q": converged (1 changed).\n'
    r = _box(home, tmp_path, "apply")
    assert (r.returncode, r.stdout) == (0, 'Project "q": no changes, the host matches the Boxfile.\n')
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\nLABEL a=c\n")
    r = _box(home, tmp_path, "apply", "-o", "json")
    assert r.returncode == 0, r.stderr
    [image] = json.loads(r.stdout)["outcomes"]
    assert (image["op"], image["status"], image["build"]) == ("build", "ok", {"cached": 1, "total": 2})
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY nothere /x\n")
    r = _box(home, tmp_path, "apply")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{ctx}/Dockerfile:2:1: COPY nothere: not found in the build context" in r.stderr, r.stderr
