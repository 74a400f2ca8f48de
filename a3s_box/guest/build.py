"""Compile the guest init (C, static with musl) into the cache, once per source version.

The binary is never committed: `build_guest_init` makes it from the sources shipped in
the package, under cache_dir/guest-init-<hash of sources>/init (a3s_box/cbuild.py), and
reuses it after.
"""
from __future__ import annotations

from pathlib import Path

from a3s_box import cbuild

SOURCES = Path(__file__).parent / "init"


def cached_guest_init(cache_dir: Path) -> Path:
    """Where this release's guest init is (or would be) in the cache."""
    return cbuild.cached_path(cache_dir, "guest-init", "init", SOURCES)


def build_guest_init(cache_dir: Path, src: Path = SOURCES) -> Path:
    """Path of the compiled init for these sources, compiling it if the cache lacks it."""
    return cbuild.build_static(cache_dir, "guest-init", "init", src, "guest init")
