"""Loading valid Boxfiles: the canonical model that later stages get."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from a3s_box.boxfile import load
from a3s_box.errors import BoxfileError

ROOT = Path(__file__).resolve().parents[2]
HEAD = "apiVersion: box.a3s.dev/v1\n"


def write(tmp_path: Path, text: str, name: str = "Boxfile.yaml") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


def test_the_reference_example_loads() -> None:
    bf = load([ROOT / "examples/reference/Boxfile.yaml"], {})
    assert sorted(bf.boxes) == ["coder", "db"]
    assert bf.boxes["coder"].depends_on["db"].condition == "started"
    assert bf.boxes["coder"].resources.memory == 512 << 20
    assert bf.boxes["db"].resources.memory == 128 << 20
    assert bf.boxes["coder"].env == {"LOG_LEVEL": "info"}
    assert bf.boxes["db"].namespaces.agent.command == ["/bin/sh", "-c", "exec sleep 3600"]
    assert bf.images["tools"].path == ROOT / "examples/reference/images/tools"
    assert bf.pools["coders"].min_ready == 2 and bf.pools["coders"].max == 8
    biz = bf.boxes["coder"].namespaces.business
    assert biz is not None and biz.isolate == ["mount", "pid", "ipc", "uts", "net"]


def test_the_demo_example_loads() -> None:
    bf = load([ROOT / "examples/hello/Boxfile.yaml"], {})
    assert bf.project == "hello"
    assert bf.boxes["agent"].namespaces.agent.command is None  # runs the image's Entrypoint+Cmd


def test_defaults(tmp_path: Path) -> None:
    bf = load([write(tmp_path, HEAD + "boxes:\n  a: {image: 'x:1'}\n")], {})
    a = bf.boxes["a"]
    assert (a.resources.vcpus, a.resources.memory) == (1, 256 << 20)
    assert a.namespaces.agent.isolate == ["mount", "pid", "ipc", "uts"]
    assert a.namespaces.agent.restart == "always" and a.namespaces.business is None
    assert a.driver == "auto" and a.timeouts.ready == 120.0
    key, image = bf.image_of("a")
    assert key is None and image.ref == "x:1"


@pytest.mark.parametrize("text,seconds", [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("7", 7)])
def test_durations(tmp_path: Path, text: str, seconds: float) -> None:
    f = write(tmp_path, HEAD + f"boxes:\n  a: {{image: 'x:1', timeouts: {{ready: {text}}}}}\n")
    assert load([f], {}).boxes["a"].timeouts.ready == seconds


@pytest.mark.parametrize("text,size", [("64Mi", 64 << 20), ("1Gi", 1 << 30), ("100M", 100_000_000),
                                       ("1G", 10**9), ("131072Ki", 128 << 20), ("268435456", 256 << 20)])
def test_sizes(tmp_path: Path, text: str, size: int) -> None:
    f = write(tmp_path, HEAD + f"boxes:\n  a: {{image: 'x:1', resources: {{memory: {text}}}}}\n")
    assert load([f], {}).boxes["a"].resources.memory == size


def test_interpolation(tmp_path: Path) -> None:
    f = write(tmp_path, HEAD + "boxes:\n  a:\n    image: 'reg/x:${TAG}'\n"
              "    env: {A: '${A:-dflt}', B: '${B-unset}', C: 'cost: $$5', D: '${D:-}'}\n")
    a = load([f], {"TAG": "1.2", "B": ""}).boxes["a"]
    assert a.image == "reg/x:1.2"
    assert a.env == {"A": "dflt", "B": "", "C": "cost: $5", "D": ""}


def test_x_keys_are_ignored(tmp_path: Path) -> None:
    f = write(tmp_path, HEAD + "x-note: hello\nboxes:\n  a:\n    x-owner: me\n    image: 'x:1'\n"
              "    resources: {x-why: small, vcpus: 2}\n")
    assert load([f], {}).boxes["a"].resources.vcpus == 2


def test_env_values_may_be_numbers_and_booleans(tmp_path: Path) -> None:
    f = write(tmp_path, HEAD + "boxes:\n  a: {image: 'x:1', env: {PORT: 8080, DEBUG: true, R: 1.5}}\n")
    assert load([f], {}).boxes["a"].env == {"PORT": "8080", "DEBUG": "true", "R": "1.5"}


def test_several_files_merge_like_compose(tmp_path: Path) -> None:
    base = write(tmp_path, HEAD + "boxes:\n  a:\n    image: 'x:1'\n    env: {A: '1', B: '2'}\n"
                 "    namespaces: {agent: {command: [sh, -c, 'sleep 1']}}\n", "base.yaml")
    over = write(tmp_path, "boxes:\n  a:\n    env: {B: '3'}\n"
                 "    namespaces: {agent: {command: [sleep, '9']}}\n  b: {image: 'y:2'}\n", "over.yaml")
    bf = load([base, over], {})
    assert bf.boxes["a"].env == {"A": "1", "B": "3"}  # mappings merge
    assert bf.boxes["a"].namespaces.agent.command == ["sleep", "9"]  # lists are replaced
    assert sorted(bf.boxes) == ["a", "b"]
    assert bf.files == (base.absolute(), over.absolute())


def test_depends_on_long_form(tmp_path: Path) -> None:
    f = write(tmp_path, HEAD + "boxes:\n  db:\n    image: 'x:1'\n    healthcheck: {command: ['true']}\n"
              "  a: {image: 'x:1', depends_on: {db: {condition: healthy}}}\n")
    assert load([f], {}).boxes["a"].depends_on["db"].condition == "healthy"


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BoxfileError) as e:
        load([tmp_path / "nope.yaml"], {})
    assert str(e.value) == f"{tmp_path / 'nope.yaml'}: no such file"


def test_scalars_are_read_as_yaml_1_2_like_editors_do(tmp_path: Path) -> None:
    f = write(tmp_path, HEAD + "boxes:\n  a:\n    image: 'x:1'\n"
              "    env: {A: yes, B: off, C: 1:30, D: 2024-01-01, E: 0o17, F: 010, G: true}\n")
    assert load([f], {}).boxes["a"].env == {
        "A": "yes", "B": "off", "C": "1:30", "D": "2024-01-01", "E": "15", "F": "10", "G": "true"}


def test_a_merge_key_may_be_overridden(tmp_path: Path) -> None:
    f = write(tmp_path, HEAD + "x-box: &box {image: 'x:1', resources: {vcpus: 2}}\n"
              "boxes:\n  x-template: &t {image: 'y:1'}\n  a:\n    <<: [*box, *t]\n    resources: {vcpus: 4}\n")
    a = load([f], {}).boxes["a"]
    assert (a.image, a.resources.vcpus) == ("x:1", 4)  # the first merged mapping wins, keys here win


def test_image_paths_are_relative_to_the_file_that_sets_them_after_interpolation(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    base = write(tmp_path, HEAD + "images:\n  a: {path: ./a}\n  b: {path: ./b}\n", "base.yaml")
    over = write(tmp_path, "images:\n  b: {path: '${DIR}/b'}\n", "sub/over.yaml")
    bf = load([base, over], {"DIR": "imgs"})
    assert bf.images["a"].path == tmp_path / "a"
    assert bf.images["b"].path == tmp_path / "sub/imgs/b"

    # Boxes name their image; a direct reference gets a synthetic ImageDef.
    f = write(tmp_path, HEAD + "images:\n  base: {ref: 'r/x:1'}\nboxes:\n  a: {image: base}\n  b: {image: 'r/y:2'}\n")
    bf = load([f], {})
    assert bf.image_of("a") == ("base", bf.images["base"])
    assert bf.image_of("b")[0] is None and bf.image_of("b")[1].ref == "r/y:2"


def test_aliases_nesting_deeper_than_allowed_are_refused(tmp_path: Path) -> None:
    lines = [HEAD, "x-0: &l0 [1]\n"]
    for i in range(1, 40):
        lines.append(f"x-{i}: &l{i} [[[*l{i - 1}]]]\n")  # each level 3 deeper than the last
    f = write(tmp_path, "".join(lines))
    with pytest.raises(BoxfileError) as e:
        load([f], {})
    assert str(e.value) == f"{f}:23:15: nested more than 64 levels deep through aliases; refused"


def test_the_model_is_frozen(tmp_path: Path) -> None:
    bf = load([write(tmp_path, HEAD + "boxes:\n  a: {image: 'x:1'}\n")], {})
    with pytest.raises(ValidationError):
        bf.boxes["a"].resources.vcpus = 3


def test_interpolated_numbers_and_durations(tmp_path: Path) -> None:
    f = write(tmp_path, HEAD + "boxes:\n  a:\n    image: 'x:1'\n"
              "    resources: {vcpus: '${CPUS}', memory: '${MEM:-1Gi}'}\n    timeouts: {ready: '${READY:-90}'}\n")
    a = load([f], {"CPUS": "2"}).boxes["a"]
    assert (a.resources.vcpus, a.resources.memory, a.timeouts.ready) == (2, 1 << 30, 90.0)
