"""The JSON Schema: in sync with the models, and agreeing with `box validate` in two
independent validators (python-jsonschema and node's ajv, as editors use)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ruamel.yaml import YAML

from a3s_box.boxfile import load
from a3s_box.errors import BoxfileError
from a3s_box.schema import boxfile_schema, schema_text

ROOT = Path(__file__).resolve().parents[2]
HEAD = "apiVersion: box.a3s.dev/v1\n"

GOOD = {
    "reference": (ROOT / "examples/reference/Boxfile.yaml").read_text(),
    "demo": (ROOT / "examples/hello/Boxfile.yaml").read_text(),
    "long depends_on": HEAD + "boxes:\n  db:\n    image: 'x:1'\n    healthcheck: {command: ['true'], interval: 2s}\n"
                       "  a: {image: 'x:1', depends_on: {db: {condition: healthy}}, lifetime: {max_duration: 1h}}\n",
    "x- keys": HEAD + "x-a: &a {vcpus: 2}\nboxes:\n  a: {image: 'x:1', resources: *a, x-note: hi}\n",
    "x- template among boxes": HEAD + "boxes:\n  x-tmpl: &t {resources: {vcpus: 2}}\n"
                               "  a: {<<: *t, image: 'x:1'}\npools:\n  x-none: {}\n",
    "empty sections": HEAD + "images:\nboxes:\npools:\n",
    "null counts as absent": HEAD + "images:\n  a: {ref: 'x:1', path: null}\n",
    "every field": HEAD + """project: demo
images:
  base: {ref: "localhost:5000/a3s/busybox:1.35"}
  tools: {path: ./images/tools}
boxes:
  db:
    image: base
    resources: {vcpus: 1, memory: 134217728}
    healthcheck: {command: [/bin/true], interval: 500ms, timeout: 2s, retries: 5, start_period: 1h30m}
  coder:
    image: docker.io/library/busybox:1.36
    depends_on: {db: {condition: healthy}}
    resources: {vcpus: 2, memory: 1Gi}
    env: {LOG_LEVEL: info, PORT: 8080, DEBUG: true}
    namespaces:
      agent: {command: [sh], isolate: [mount, pid], env: {A: b}, workdir: /app, restart: on-failure}
      business: {parent: agent, isolate: [mount, pid, ipc, uts, net]}
    lifetime: {idle_timeout: 10m, max_duration: 1h}
    driver: qemu
    hostname: coder-1
    timeouts: {ready: 60}
pools:
  coders: {box: coder, min_ready: 0, max: 8, update: on_replenish, idle_timeout: 5m}
""",
}
BAD_DIR = ROOT / "tests/boxfile/bad"
# Bad fixtures whose problem no JSON Schema can express: cross references, values
# compared with each other, interpolation, units' meaning, and what is wrong before
# there is YAML data at all. The schema must accept the ones that parse (so this list
# is exact), and must refuse every other bad fixture, as `box validate` does.
NOT_IN_SCHEMA = {
    "binary", "not-utf-8", "tab-indentation", "duplicate-key", "syntax-error", "yaml-bomb",
    "deep-nesting", "unknown-image", "unknown-depends-on", "unknown-pool-box", "dependency-cycle",
    "depends-on-itself", "healthy-without-healthcheck", "min-ready-above-max", "too-little-memory",
    "unset-variable", "required-variable-with-message", "invalid-interpolation",
}
# Not YAML data, or data no validator should be handed (the bomb, 5,000 levels deep).
UNPARSABLE = {"binary", "not-utf-8", "tab-indentation", "duplicate-key", "syntax-error", "yaml-bomb",
              "deep-nesting"}


def _yaml(text: str) -> Any:
    """YAML 1.2, as editors read it (ruamel's safe loader: independent of box's own)."""
    return YAML(typ="safe", pure=True).load(text)


def _bad_docs() -> dict[str, Any]:
    return {f.stem: _yaml(f.read_text()) for f in sorted(BAD_DIR.glob("*.yaml")) if f.stem not in UNPARSABLE}


BAD = {k: v for k, v in _bad_docs().items() if k not in NOT_IN_SCHEMA}
OUTSIDE = {k: v for k, v in _bad_docs().items() if k in NOT_IN_SCHEMA}


def test_the_committed_schema_is_current() -> None:
    committed = (ROOT / "schema/boxfile.schema.json").read_text()
    assert committed == schema_text(), "stale: run `python -m a3s_box.schema > schema/boxfile.schema.json`"


def test_the_schema_is_a_valid_draft_7_schema() -> None:
    jsonschema.Draft7Validator.check_schema(boxfile_schema())


def test_every_field_has_a_description_examples_and_a_default_unless_required() -> None:
    schema = boxfile_schema()
    missing = []
    for name, node in [("Boxfile", schema), *schema["definitions"].items()]:
        for prop, spec in node.get("properties", {}).items():
            wanted = ["description", "examples"] + ([] if prop in node.get("required", []) else ["default"])
            missing += [f"{name}.{prop}: {w}" for w in wanted if w not in spec]
    assert missing == []


def _loads(name: str, text: str, tmp_path: Path) -> bool:
    f = tmp_path / f"{name.replace(' ', '_')}.yaml"
    f.write_text(text)
    try:
        load([f], {})
    except BoxfileError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_files_pass_both(name: str, tmp_path: Path) -> None:
    assert _loads(name, GOOD[name], tmp_path)
    jsonschema.Draft7Validator(boxfile_schema()).validate(_yaml(GOOD[name]))


@pytest.mark.parametrize("name", sorted(BAD))
def test_the_schema_refuses_what_box_validate_refuses(name: str) -> None:
    errors = list(jsonschema.Draft7Validator(boxfile_schema()).iter_errors(BAD[name]))
    assert errors, f"the schema accepts {name!r}, box validate refuses it"


@pytest.mark.parametrize("name", sorted(OUTSIDE))
def test_the_schema_accepts_what_only_box_validate_can_catch(name: str) -> None:
    assert list(jsonschema.Draft7Validator(boxfile_schema()).iter_errors(OUTSIDE[name])) == []


AJV_SCRIPT = r"""
const path = require('path');
const Ajv = require(path.join(process.argv[2], 'node_modules', 'ajv'));
const addFormats = require(path.join(process.argv[2], 'node_modules', 'ajv-formats'));
const fs = require('fs');
const schema = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
const docs = JSON.parse(fs.readFileSync(process.argv[4], 'utf8'));
const ajv = new Ajv({allErrors: true, strict: true});  // strict: unknown keywords, formats and loose types fail
addFormats(ajv);
const validate = ajv.compile(schema);
const out = {};
for (const [name, doc] of Object.entries(docs)) out[name] = validate(doc);
console.log(JSON.stringify(out));
"""


def test_ajv_agrees(tmp_path: Path) -> None:
    """A second, independent validator (what many editors and CI linters run)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (scripts/setup.sh --test installs it)")
    ajv_dir = Path(os.environ.get("A3S_BOX_AJV_DIR", ROOT / ".cache/ajv"))
    if not (ajv_dir / "node_modules/ajv").is_dir():  # scripts/setup.sh --test does this too
        npm = shutil.which("npm")
        assert npm is not None, "node without npm: install npm, or ajv into A3S_BOX_AJV_DIR"
        subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(ajv_dir),
                        "ajv@8", "ajv-formats@3"], check=True, capture_output=True, timeout=300)
    docs = {f"good:{k}": _yaml(v) for k, v in GOOD.items()}
    docs.update({f"bad:{k}": v for k, v in BAD.items()})
    (tmp_path / "docs.json").write_text(json.dumps(docs))
    (tmp_path / "check.js").write_text(AJV_SCRIPT)
    r = subprocess.run([node, str(tmp_path / "check.js"), str(ajv_dir),
                        str(ROOT / "schema/boxfile.schema.json"), str(tmp_path / "docs.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    verdicts = json.loads(r.stdout)
    assert {k: v for k, v in verdicts.items() if v != k.startswith("good:")} == {}
