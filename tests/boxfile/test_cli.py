"""`box validate` and `box schema` through the real CLI entry point (a subprocess, as
users run it: exit codes and streams are part of the interface)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAD = "apiVersion: box.a3s.dev/v1\n"


def box(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "a3s_box.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_validate_merges_several_files_and_counts_what_it_found(tmp_path: Path) -> None:
    (tmp_path / "Boxfile.yaml").write_text(HEAD + "images:\n  base: {ref: 'r/x:1'}\nboxes:\n  a: {image: base}\n")
    (tmp_path / "more.yaml").write_text("boxes:\n  b: {image: base}\npools:\n  p: {box: b}\n")
    r = box("validate", "-f", "Boxfile.yaml", "-f", "more.yaml", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (
        0, "Boxfile.yaml, more.yaml: ok (1 images, 2 boxes, 1 pools)\n", "")
    r = box("validate", cwd=tmp_path)  # -f Boxfile.yaml by default
    assert (r.returncode, r.stdout) == (0, "Boxfile.yaml: ok (1 images, 1 boxes, 0 pools)\n")


def test_validate_reports_every_file_problem_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("")
    (tmp_path / "b.yaml").write_text(HEAD + "boxes:\n  a: {image: x:1, vcpus: 2}\n")
    r = box("validate", "-f", "a.yaml", "-f", "b.yaml", "-f", "c.yaml", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.splitlines() == [
        "a.yaml: is empty: a Boxfile needs at least `apiVersion: box.a3s.dev/v1`",
        "c.yaml: no such file",
    ]  # b.yaml's problem comes once the files themselves are readable


def test_schema_prints_the_committed_schema(tmp_path: Path) -> None:
    r = box("schema", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout == (ROOT / "schema/boxfile.schema.json").read_text()
