"""The JSON Schema: in sync with the models, and agreeing with `box validate` in two
independent validators (python-jsonschema and node's ajv, as editors use)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

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
}
# Problems a schema can express: both the schema and the loader must refuse these.
BAD = {
    "unknown key": HEAD + "boxes:\n  a: {image: 'x:1', resorces: {}}\n",
    "wrong apiVersion": "apiVersion: box.a3s.dev/v2\n",
    "missing apiVersion": "boxes: {}\n",
    "type error": HEAD + "boxes:\n  a: {image: 'x:1', resources: {vcpus: two}}\n",
    "bad unit": HEAD + "boxes:\n  a: {image: 'x:1', resources: {memory: 12Qi}}\n",
    "vcpus below minimum": HEAD + "boxes:\n  a: {image: 'x:1', resources: {vcpus: 0}}\n",
    "empty command": HEAD + "boxes:\n  a: {image: 'x:1', namespaces: {agent: {command: []}}}\n",
    "bad isolate": HEAD + "boxes:\n  a: {image: 'x:1', namespaces: {agent: {isolate: [user]}}}\n",
    "duplicate isolate": HEAD + "boxes:\n  a: {image: 'x:1', namespaces: {agent: {isolate: [pid, pid]}}}\n",
    "bad box name": HEAD + "boxes:\n  My_Box: {image: 'x:1'}\n",
    "bad pool name": HEAD + "boxes:\n  a: {image: 'x:1'}\npools:\n  P1: {box: a}\n",
    "bad depends_on name": HEAD + "boxes:\n  a: {image: 'x:1', depends_on: [Bad]}\n",
    "ref and path": HEAD + "images:\n  a: {ref: 'x:1', path: ./p}\n",
    "neither ref nor path": HEAD + "images:\n  a: {}\n",
    "max zero": HEAD + "boxes:\n  a: {image: 'x:1'}\npools:\n  p: {box: a, max: 0}\n",
    "bad restart": HEAD + "boxes:\n  a: {image: 'x:1', namespaces: {agent: {restart: sometimes}}}\n",
    "bad condition": HEAD + "boxes:\n  b: {image: 'x:1'}\n  a: {image: 'x:1', depends_on: {b: {condition: ready}}}\n",
    "bad duration": HEAD + "boxes:\n  a: {image: 'x:1', timeouts: {ready: soon}}\n",
    "empty image": HEAD + "boxes:\n  a: {image: ''}\n",
}


def test_the_committed_schema_is_current() -> None:
    committed = (ROOT / "schema/boxfile.schema.json").read_text()
    assert committed == schema_text(), "stale: run `python -m a3s_box.schema > schema/boxfile.schema.json`"


def test_the_schema_is_a_valid_draft_7_schema() -> None:
    jsonschema.Draft7Validator.check_schema(boxfile_schema())


def test_every_field_has_a_description() -> None:
    missing = []
    for name, node in boxfile_schema()["$defs"].items():
        for prop, spec in node.get("properties", {}).items():
            if "description" not in spec:
                missing.append(f"{name}.{prop}")
    assert missing == []


def _check(name: str, text: str, tmp_path: Path) -> bool:
    f = tmp_path / f"{name.replace(' ', '_')}.yaml"
    f.write_text(text)
    try:
        load([f], {})
    except BoxfileError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_files_pass_both(name: str, tmp_path: Path) -> None:
    assert _check(name, GOOD[name], tmp_path)
    jsonschema.Draft7Validator(boxfile_schema()).validate(yaml.safe_load(GOOD[name]))


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_fail_both(name: str, tmp_path: Path) -> None:
    assert not _check(name, BAD[name], tmp_path)
    errors = list(jsonschema.Draft7Validator(boxfile_schema()).iter_errors(yaml.safe_load(BAD[name])))
    assert errors, f"the schema accepts {name!r}, box validate refuses it"


AJV_SCRIPT = r"""
const path = require('path');
const Ajv = require(path.join(process.argv[2], 'node_modules', 'ajv'));
const addFormats = require(path.join(process.argv[2], 'node_modules', 'ajv-formats'));
const fs = require('fs');
const schema = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
const docs = JSON.parse(fs.readFileSync(process.argv[4], 'utf8'));
const ajv = new Ajv({allErrors: true, strict: false});
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
    assert (ajv_dir / "node_modules/ajv").is_dir(), "run scripts/setup.sh --test to install ajv"
    docs = {f"good:{k}": yaml.safe_load(v) for k, v in GOOD.items()}
    docs.update({f"bad:{k}": yaml.safe_load(v) for k, v in BAD.items()})
    (tmp_path / "docs.json").write_text(json.dumps(docs))
    (tmp_path / "check.js").write_text(AJV_SCRIPT)
    r = subprocess.run([node, str(tmp_path / "check.js"), str(ajv_dir),
                        str(ROOT / "schema/boxfile.schema.json"), str(tmp_path / "docs.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    verdicts = json.loads(r.stdout)
    assert {k: v for k, v in verdicts.items() if v != k.startswith("good:")} == {}
