"""Every kind of Boxfile problem, with the exact text a user sees (FILE:LINE:COL)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from a3s_box.boxfile import load
from a3s_box.errors import BoxfileError

HEAD = "apiVersion: box.a3s.dev/v1\n"


def problems(tmp_path: Path, text: str | bytes, env: dict[str, str] | None = None) -> list[str]:
    f = tmp_path / "Boxfile.yaml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(BoxfileError) as e:
        load([f], env or {})
    return [str(p).replace(str(tmp_path) + "/", "") for p in e.value.problems]


CASES = {
    "unknown key with a hint": (
        HEAD + "boxes:\n  a:\n    image: x:1\n    resorces: {vcpus: 1}\n",
        ["Boxfile.yaml:5:5: boxes.a.resorces: unknown key 'resorces' (did you mean 'resources'?)"]),
    "unknown top-level key": (
        HEAD + "boxs: {}\n",
        ["Boxfile.yaml:2:1: boxs: unknown key 'boxs' (did you mean 'boxes'?)"]),
    "wrong apiVersion": (
        "apiVersion: box.a3s.dev/v2\n",
        ["Boxfile.yaml:1:13: apiVersion: must be one of: box.a3s.dev/v1, not 'box.a3s.dev/v2'"]),
    "missing apiVersion": (
        "boxes: {}\n",
        ["Boxfile.yaml:1:1: missing required key 'apiVersion'"]),
    "type error": (
        HEAD + "boxes:\n  a:\n    image: x:1\n    resources: {vcpus: two}\n",
        ["Boxfile.yaml:5:24: boxes.a.resources.vcpus: must be a whole number, not 'two'"]),
    "bad unit": (
        HEAD + "boxes:\n  a:\n    image: x:1\n    resources: {memory: 12Qi}\n",
        ["Boxfile.yaml:5:25: boxes.a.resources.memory: '12Qi' is not a size: use a number with "
         "Ki, Mi, Gi (or K, M, G), e.g. 512Mi"]),
    "too little memory": (
        HEAD + "boxes:\n  a:\n    image: x:1\n    resources: {memory: 16Mi}\n",
        ["Boxfile.yaml:5:25: boxes.a.resources.memory: must be at least 64Mi (the guest kernel "
         "and init need it)"]),
    "vcpus below minimum": (
        HEAD + "boxes:\n  a:\n    image: x:1\n    resources: {vcpus: 0}\n",
        ["Boxfile.yaml:5:24: boxes.a.resources.vcpus: must be at least 1, not 0"]),
    "empty command": (
        HEAD + "boxes:\n  a:\n    image: x:1\n    namespaces: {agent: {command: []}}\n",
        ["Boxfile.yaml:5:35: boxes.a.namespaces.agent.command: must not be empty"]),
    "bad isolate": (
        HEAD + "boxes:\n  a:\n    image: x:1\n    namespaces: {agent: {isolate: [mount, user]}}\n",
        ["Boxfile.yaml:5:43: boxes.a.namespaces.agent.isolate.1: must be one of: mount, pid, "
         "ipc, uts, net, not 'user'"]),
    "unknown image": (
        HEAD + "images:\n  base: {ref: 'r/x:1'}\nboxes:\n  a: {image: bsae}\n",
        ["Boxfile.yaml:5:14: boxes.a.image: unknown image 'bsae' (did you mean 'base'?); a "
         "direct reference needs a tag or registry, e.g. busybox:latest"]),
    "unknown depends_on": (
        HEAD + "boxes:\n  db: {image: x:1}\n  a: {image: x:1, depends_on: [dbb]}\n",
        ["Boxfile.yaml:4:32: boxes.a.depends_on.0: unknown box 'dbb' (did you mean 'db'?)"]),
    "unknown pool box": (
        HEAD + "boxes:\n  coder: {image: x:1}\npools:\n  p: {box: codr, max: 2}\n",
        ["Boxfile.yaml:5:12: pools.p.box: unknown box 'codr' (did you mean 'coder'?)"]),
    "unknown namespace parent": (
        HEAD + "boxes:\n  a:\n    image: x:1\n    namespaces: {business: {parent: agnt}}\n",
        ["Boxfile.yaml:5:37: boxes.a.namespaces.business.parent: unknown namespace 'agnt' "
         "(did you mean 'agent'?): business nests in 'agent'"]),
    "dependency cycle": (
        HEAD + "boxes:\n  c: {image: x:1, depends_on: [a]}\n  a: {image: x:1, depends_on: [b]}\n"
        "  b: {image: x:1, depends_on: {c: {condition: started}}}\n",
        ["Boxfile.yaml:4:32: boxes.a.depends_on.0: dependency cycle: a -> b -> c -> a"]),
    "min_ready above max": (
        HEAD + "boxes:\n  a: {image: x:1}\npools:\n  p: {box: a, min_ready: 9, max: 8}\n",
        ["Boxfile.yaml:5:26: pools.p.min_ready: min_ready (9) is greater than max (8)"]),
    "bad name": (
        HEAD + "boxes:\n  My_Box: {image: x:1}\n",
        ["Boxfile.yaml:3:3: boxes.My_Box: 'My_Box' is not a valid name: lowercase letters, "
         "digits and '-', starting and ending with a letter or digit"]),
    "ref and path": (
        HEAD + "images:\n  a: {ref: 'x:1', path: ./p}\n",
        ["Boxfile.yaml:3:6: images.a: give exactly one of `ref` (a registry reference) and "
         "`path` (a local image)"]),
    "healthy without healthcheck": (
        HEAD + "boxes:\n  db: {image: x:1}\n  a: {image: x:1, depends_on: {db: {condition: healthy}}}\n",
        ["Boxfile.yaml:4:32: boxes.a.depends_on.db: waits for box db to be healthy, but db "
         "declares no healthcheck"]),
    "unset variable": (
        HEAD + "boxes:\n  a: {image: 'x:${TAG}'}\n",
        ["Boxfile.yaml:3:14: boxes.a.image: ${TAG} is not set in the environment (give a "
         "default: ${TAG:-value})"]),
    "required variable with message": (
        HEAD + "boxes:\n  a: {image: 'x:${TAG:?set TAG to the release}'}\n",
        ["Boxfile.yaml:3:14: boxes.a.image: ${TAG}: set TAG to the release"]),
    "duplicate key": (
        HEAD + "boxes:\n  a: {image: x:1}\n  a: {image: x:2}\n",
        ["Boxfile.yaml:4:3: YAML: duplicate key 'a'"]),
    "tab indentation": (
        HEAD + "boxes:\n\ta: {image: x:1}\n",
        ["Boxfile.yaml:3:1: tab character in indentation: YAML indents with spaces"]),
    "syntax error": (
        HEAD + "boxes:\n  a: {image: x:1\n",
        ["Boxfile.yaml:4:1: YAML: did not find expected ',' or '}'"]),
    "not a mapping": (
        "- a\n- b\n",
        ["Boxfile.yaml:1:1: must be a mapping of apiVersion, images, boxes and pools, not a list"]),
    "empty": (
        "# nothing here\n",
        ["Boxfile.yaml: is empty: a Boxfile needs at least `apiVersion: box.a3s.dev/v1`"]),
    "binary": (
        b"\x7fELF\x02\x01\x01\x00\x00\x00",
        ["Boxfile.yaml: is a binary file, not a YAML Boxfile"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_problem_text(tmp_path: Path, case: str) -> None:
    text, expected = CASES[case]
    assert problems(tmp_path, text) == expected


def test_all_problems_are_reported_at_once_in_file_order(tmp_path: Path) -> None:
    got = problems(tmp_path, HEAD + "boxes:\n  a:\n    image: nope\n    resources: {vcpus: 0}\n"
                   "pools:\n  p: {box: zz, max: 0}\n")
    assert [g.split(": ")[1] for g in got] == [
        "boxes.a.image", "boxes.a.resources.vcpus", "pools.p.box", "pools.p.max"]


def test_a_problem_in_a_later_file_names_that_file(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(HEAD + "boxes:\n  a: {image: x:1}\n")
    over = tmp_path / "override.yaml"
    over.write_text("boxes:\n  a:\n    resources: {vcpus: -1}\n")
    with pytest.raises(BoxfileError) as e:
        load([base, over], {})
    assert [str(p).replace(str(tmp_path) + "/", "") for p in e.value.problems] == [
        "override.yaml:3:24: boxes.a.resources.vcpus: must be at least 1, not -1"]


def _refused_quickly(tmp_path: Path, text: str, expect: str) -> None:
    t0 = time.monotonic()
    got = problems(tmp_path, text)
    elapsed = time.monotonic() - t0
    assert len(got) == 1 and expect in got[0], got
    assert elapsed >= 0  # speed is bench/'s business; the point here is that it returns


def test_a_yaml_bomb_is_refused(tmp_path: Path) -> None:
    lines = [HEAD, 'x-a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n']
    prev = "a"
    for name in "bcdefghij":
        lines.append(f"x-{name}: &{name} [{', '.join(['*' + prev] * 9)}]\n")
        prev = name
    lines.append("boxes:\n  a: {image: x:1, env: {A: *j}}\n")
    _refused_quickly(tmp_path, "".join(lines), "a YAML bomb?")


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    _refused_quickly(tmp_path, HEAD + "x-deep: " + "[" * 5000 + "]" * 5000 + "\n", "nested")


def test_a_10_mb_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    _refused_quickly(tmp_path, HEAD + "# " + "x" * (10 << 20) + "\n", "larger than 1 MiB")


def test_the_cli_prints_problems_and_exits_2_without_a_traceback(tmp_path: Path) -> None:
    f = tmp_path / "Boxfile.yaml"
    f.write_text(HEAD + "boxes:\n  a: {image: nope}\n")
    r = subprocess.run([sys.executable, "-m", "a3s_box.cli", "validate", "-f", str(f)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.startswith(f"{f}:3:14: boxes.a.image: unknown image 'nope'")
    assert "Traceback" not in r.stderr
