"""The version is written twice, in pyproject.toml (the package's metadata) and in
a3s_box/version.py (what the code says); they must agree. The top package re-exports it."""
from __future__ import annotations

import tomllib
from pathlib import Path

import a3s_box
from a3s_box.version import __version__

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_and_the_code_say_the_same_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__


def test_the_top_package_re_exports_it() -> None:
    assert a3s_box.__version__ is __version__
