"""Every package and top-level module of a3s_box has a place in the layers contract, so
that import-linter checks it: a new one left out fails here, not silently unchecked."""
from __future__ import annotations

import tomllib
from pathlib import Path

import a3s_box

ROOT = Path(a3s_box.__file__).parent


def test_the_layers_name_every_package_and_module() -> None:
    config = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())
    layers = config["tool"]["importlinter"]["contracts"][0]["layers"]
    named = {m.strip() for layer in layers for m in layer.split("|")}
    children = {f"a3s_box.{p.name}" for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    children |= {f"a3s_box.{p.stem}" for p in ROOT.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert children - named == set(), "give these a layer in pyproject.toml's first contract"
    assert named - children == set(), "the layers name modules that do not exist"
