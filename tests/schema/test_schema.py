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
    "unset-variable", "required-variable-with-message", "invalid-interpolation", "infinite-duration",
    "network-bad-destination", "network-egress-needs-allowlist", "network-bad-port",
    "network-bad-host-override", "secret-host-not-allowed", "secret-bad-host",
    "volume-unknown", "volume-bad-target", "volume-two-on-one-target",
    "build-context-missing", "build-ports",
}
# Not YAML data, not JSON data (.inf), or data no validator should be handed (the bomb,
# 5,000 levels deep).
UNPARSABLE = {"binary", "not-utf-8", "tab-indentation", "duplicate-key", "syntax-error", "yaml-bomb",
              "deep-nesting", "infinite-duration"}


def _yaml(text: str) -> Any:
    """YAML 1.2 as editors read it (ruamel's safe loader: independent of box's own), then
    seen as JSON (keys become strings), as validators see it."""
    return json.loads(json.dumps(YAML(typ="safe", pure=True).load(text)))


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


def _node_packages(env_var: str, default: Path, packages: list[str]) -> tuple[str, Path]:
    """node, and a folder with these npm packages (installed on first use; scripts/setup.sh
    --test installs ajv there too). Skips only when node itself is absent."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (scripts/setup.sh --test installs it)")
    where = Path(os.environ.get(env_var, default))
    names = [p.rsplit("@", 1)[0] if not p.startswith("@") or p.count("@") > 1 else p for p in packages]
    if not all((where / "node_modules" / n).is_dir() for n in names):
        npm = shutil.which("npm")
        assert npm is not None, f"node without npm: install npm, or {' '.join(packages)} into {env_var}"
        subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(where),
                        *packages], check=True, capture_output=True, timeout=300)
    return node, where


def test_ajv_agrees(tmp_path: Path) -> None:
    """A second, independent validator (what many editors and CI linters run)."""
    node, ajv_dir = _node_packages("A3S_BOX_AJV_DIR", ROOT / ".cache/ajv", ["ajv@8", "ajv-formats@3"])
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


YLS_SCRIPT = r"""
// Diagnostics from yaml-language-server's own validation service (what VS Code's YAML
// extension, Neovim and Helix show), for documents at given file URIs.
const path = require('path');
const fs = require('fs');
const mods = path.join(process.argv[2], 'node_modules');
const { getLanguageService } = require(path.join(mods, 'yaml-language-server'));
const { TextDocument } = require(path.join(mods, 'vscode-languageserver-textdocument'));
const docs = JSON.parse(fs.readFileSync(process.argv[4], 'utf8'));
const ls = getLanguageService({
  schemaRequestService: async (uri) => fs.readFileSync(new URL(uri), 'utf8'),
  workspaceContext: { resolveRelativePath: (rel, res) => new URL(rel, res).toString() },
});
// Documents without a modeline get the schema the way a `yaml.schemas` setting gives it.
ls.configure({ validate: true, schemas: [{ uri: 'file://' + process.argv[3], fileMatch: ['*.yaml'] }] });
(async () => {
  const out = {};
  for (const [uri, text] of Object.entries(docs)) {
    const diags = await ls.doValidation(TextDocument.create(uri, 'yaml', 1, text), false);
    out[uri] = diags.map(d => `${d.range.start.line + 1}:${d.range.start.character + 1}: ${d.message}`);
  }
  console.log(JSON.stringify(out));
})().catch(e => { console.error(e); process.exit(1); });
"""


def test_yaml_language_server_flags_what_box_validate_does(tmp_path: Path) -> None:
    """The editor's view: yaml-language-server's validation service, loading the schema
    through the reference example's modeline, and through settings for the rest."""
    node, yls_dir = _node_packages("A3S_BOX_YLS_DIR", ROOT / ".cache/yaml-language-server",
                                   ["yaml-language-server@1", "vscode-languageserver-textdocument@1"])
    examples = [ROOT / "examples/reference/Boxfile.yaml", ROOT / "examples/hello/Boxfile.yaml"]
    docs = {f.as_uri(): f.read_text() for f in examples}  # at their place: their modelines resolve
    docs.update({(tmp_path / f"good-{i}.yaml").as_uri(): text
                 for i, text in enumerate(GOOD.values()) if text not in docs.values()})
    # An empty file has no document to validate: editors show nothing, box validate says so.
    docs.update({(BAD_DIR / f"{k}.yaml").as_uri(): (BAD_DIR / f"{k}.yaml").read_text()
                 for k in sorted(BAD) if k != "empty"})
    (tmp_path / "docs.json").write_text(json.dumps(docs))
    (tmp_path / "check.js").write_text(YLS_SCRIPT)
    r = subprocess.run([node, str(tmp_path / "check.js"), str(yls_dir), str(ROOT / "schema/boxfile.schema.json"),
                        str(tmp_path / "docs.json")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    diagnostics = json.loads(r.stdout)
    assert {uri: d for uri, d in diagnostics.items() if "/bad/" not in uri and d} == {}
    assert [uri for uri, d in diagnostics.items() if "/bad/" in uri and not d] == []
    # Placed where box validate places it (tests/boxfile/bad/unknown-key-with-a-hint.expected).
    assert diagnostics[(BAD_DIR / "unknown-key-with-a-hint.yaml").as_uri()] == [
        "5:5: Property resorces is not allowed."]
