"""Compile the guest init (C, static with musl) into the cache, once per source version.

The binary is never committed: `build_guest_init` makes it from the sources shipped in
the package, under cache_dir/guest-init-<hash of sources>/init, and reuses it after.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from a3s_box.errors import BoxError

SOURCES = Path(__file__).parent / "init"
CFLAGS = ("-static", "-Os", "-Wall", "-Wextra", "-Werror", "-s")


def compiler() -> str:
    """musl-gcc, or $A3S_GUEST_CC (any compiler that links statically)."""
    return os.environ.get("A3S_GUEST_CC", "musl-gcc")


def source_files(src: Path = SOURCES) -> list[Path]:
    return sorted(p for p in src.iterdir() if p.suffix in (".c", ".h"))


def source_hash(src: Path = SOURCES) -> str:
    """Hash of the sources and flags: a changed file or flag means a new binary."""
    h = hashlib.sha256()
    h.update(" ".join((compiler(),) + CFLAGS).encode())
    for p in source_files(src):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_guest_init(cache_dir: Path, src: Path = SOURCES) -> Path:
    """Path of the compiled init for these sources, compiling it if the cache lacks it.

    Atomic: the binary is built in a temporary folder beside the target and renamed
    into place, so a concurrent or interrupted build never leaves a half-written file.
    """
    target_dir = cache_dir / f"guest-init-{source_hash(src)}"
    binary = target_dir / "init"
    if binary.is_file():
        return binary
    cc = compiler()
    if shutil.which(cc) is None:
        raise BoxError(f"guest init: compiler {cc!r} not found (install musl-tools)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".guest-init-", dir=cache_dir))
    try:
        sources = [str(p) for p in source_files(src) if p.suffix == ".c"]
        proc = subprocess.run([cc, *CFLAGS, "-o", str(tmp / "init"), *sources],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise BoxError(f"guest init: {cc} failed:\n{proc.stderr.strip()}")
        try:
            tmp.rename(target_dir)
        except OSError:
            if not binary.is_file():  # not a concurrent build that won the race
                raise
    except OSError as e:
        raise BoxError(f"guest init: cannot build into {cache_dir}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return binary
