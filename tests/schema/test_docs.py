"""docs/boxfile-reference.md: covers every field of the schema, and its example is valid."""
from __future__ import annotations

import re
from pathlib import Path

from a3s_box.boxfile import load
from a3s_box.schema import boxfile_schema

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs/boxfile-reference.md").read_text()


def test_every_schema_field_is_documented() -> None:
    schema = boxfile_schema()
    documented = set(re.findall(r"`([a-zA-Z_.]*?)`", DOC))
    leaves = {part for name in documented for part in name.split(".")}
    missing = sorted(f"{d}.{p}" for d, node in [("Boxfile", schema), *schema["definitions"].items()]
                     for p in node.get("properties", {}) if p not in leaves)
    assert missing == []


def test_the_example_is_the_reference_example_and_valid(tmp_path: Path) -> None:
    block = DOC.split("```yaml\n", 1)[1].split("```", 1)[0]
    example = (ROOT / "examples/reference/Boxfile.yaml").read_text()
    assert example == block.replace("$schema=../schema/", "$schema=../../schema/")
    f = tmp_path / "Boxfile.yaml"
    f.write_text(block)
    assert sorted(load([f], {}).boxes) == ["coder", "db"]
