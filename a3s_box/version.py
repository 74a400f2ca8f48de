"""The version of a3s-box, and nothing else: a module of its own so that any layer (the
registry client's User-Agent, `box --version`, the API's health answer) can say which
release it is without importing the top package and what its __init__ reaches.

pyproject.toml's `version` is written out too (it is static there); tests/test_version.py
keeps the two the same.
"""
from __future__ import annotations

__version__ = "0.2.0.dev0"
