"""Every kind of Boxfile problem, with the exact text a user sees (FILE:LINE:COL)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from a3s_box.boxfile import load
from a3s_box.errors import BoxfileError

HEAD = "apiVersion: box.a3s.dev/v1\n"
BAD = Path(__file__).parent / "bad"
FIXTURES = sorted(f.stem for f in BAD.glob("*.yaml"))


def problems(tmp_path: Path, text: str | bytes, env: dict[str, str] | None = None) -> list[str]:
    f = tmp_path / "Boxfile.yaml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(BoxfileError) as e:
        load([f], env or {})
    return [str(p).replace(str(tmp_path) + "/", "") for p in e.value.problems]


@pytest.mark.parametrize("name", FIXTURES)
def test_bad_fixture(name: str) -> None:
    """tests/boxfile/bad/NAME.yaml gives exactly the lines of NAME.expected: the text
    users see, with FILE:LINE:COL (file names shown relative to bad/)."""
    with pytest.raises(BoxfileError) as e:
        load([BAD / f"{name}.yaml"], {})
    got = [str(p).replace(str(BAD) + "/", "") for p in e.value.problems]
    assert got == (BAD / f"{name}.expected").read_text().splitlines()


def test_every_fixture_has_its_expected_text() -> None:
    assert sorted(f.stem for f in BAD.glob("*.expected")) == FIXTURES


def test_a_problem_in_a_later_file_names_that_file(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(HEAD + "boxes:\n  a: {image: x:1}\n")
    over = tmp_path / "override.yaml"
    over.write_text("boxes:\n  a:\n    resources: {vcpus: -1}\n")
    with pytest.raises(BoxfileError) as e:
        load([base, over], {})
    assert [str(p).replace(str(tmp_path) + "/", "") for p in e.value.problems] == [
        "override.yaml:3:24: boxes.a.resources.vcpus: must be at least 1, not -1"]


def test_a_10_mb_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    assert problems(tmp_path, HEAD + "# " + "x" * (10 << 20) + "\n") == [
        "Boxfile.yaml: is larger than 1 MiB; a Boxfile that big is surely not one (split it with several -f)"]


def test_the_cli_prints_problems_and_exits_2_without_a_traceback(tmp_path: Path) -> None:
    f = tmp_path / "Boxfile.yaml"
    f.write_text(HEAD + "boxes:\n  a: {image: nope}\n")
    r = subprocess.run([sys.executable, "-m", "a3s_box.cli", "validate", "-f", str(f)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.startswith(f"{f}:3:14: boxes.a.image: unknown image 'nope'")
    assert "Traceback" not in r.stderr


NET = HEAD + """boxes:
  coder:
    image: x:1
    network:
      mode: allowlist
      egress: [api.openai.com]
      ports: ["127.0.0.1:8080:80", "8080:81"]
"""


def test_two_ports_publishing_one_host_port_are_located(tmp_path: Path) -> None:
    assert problems(tmp_path, NET) == [
        "Boxfile.yaml:8:14: boxes.coder.network.ports: '127.0.0.1:8080:80' and '8080:81' both "
        "publish 127.0.0.1:8080"]


def test_a_secret_whose_variable_is_unset_is_an_error_at_apply_only(tmp_path: Path) -> None:
    f = tmp_path / "Boxfile.yaml"
    f.write_text(HEAD + "boxes:\n  coder:\n    image: x:1\n    network: {mode: allowlist, egress: [api.openai.com]}\n"
                 "    secrets:\n      KEY: {env: OPENAI_API_KEY, hosts: [api.openai.com]}\n")
    assert load([f], {}).boxes["coder"].secrets["KEY"].env == "OPENAI_API_KEY"  # box validate: fine
    with pytest.raises(BoxfileError) as e:
        load([f], {}, for_apply=True)
    assert [str(p).replace(str(tmp_path) + "/", "") for p in e.value.problems] == [
        "Boxfile.yaml:7:18: boxes.coder.secrets.KEY.env: environment variable OPENAI_API_KEY is not "
        "set: box coder needs it for secret KEY"]
    assert load([f], {"OPENAI_API_KEY": "sk-1"}, for_apply=True).boxes["coder"].secrets
