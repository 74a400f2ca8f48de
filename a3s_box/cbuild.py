"""Static C programs compiled into the cache, once per source version.

a3s-box ships C sources, never binaries: the guest init (a3s_box/guest/init) and the
shim's steady-state loop (a3s_box/drivers/qemu/loop). `build_static` makes one with
musl-gcc (or $A3S_GUEST_CC: any compiler that links statically) under
cache_dir/NAME-<hash of sources and flags>/PROGRAM, and reuses it after. A static musl
binary needs nothing of the host's libraries and costs a few pages per process.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from a3s_box.errors import BoxError

CFLAGS = ("-static", "-Os", "-Wall", "-Wextra", "-Werror", "-s")
# headers every program may include (`#include "exit_as.h"`): on the include path, and
# part of each program's source hash
SHARED_HEADERS = Path(__file__).parent / "csupport"


def compiler() -> str:
    """musl-gcc, or $A3S_GUEST_CC (any compiler that links statically)."""
    return os.environ.get("A3S_GUEST_CC", "musl-gcc")


def source_files(src: Path) -> list[Path]:
    """SRC's .c and .h files, then the shared headers."""
    return sorted(p for p in src.iterdir() if p.suffix in (".c", ".h")) + sorted(SHARED_HEADERS.glob("*.h"))


def source_hash(src: Path) -> str:
    """Hash of the sources and flags: a changed file or flag means a new binary. Kept
    per process while the files' sizes and times stand (every box start asks)."""
    files = source_files(src)
    seen = (compiler(), tuple((p.name, st.st_size, st.st_mtime_ns) for p in files for st in (p.stat(),)))
    cached = _hashes.get(src)
    if cached is not None and cached[0] == seen:
        return cached[1]
    h = hashlib.sha256()
    h.update(" ".join((compiler(),) + CFLAGS).encode())
    for p in files:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    digest = h.hexdigest()[:16]
    _hashes[src] = (seen, digest)
    return digest


_hashes: dict[Path, tuple[object, str]] = {}


def cached_path(cache_dir: Path, name: str, program: str, src: Path) -> Path:
    """Where the binary of these sources is (or would be) in the cache."""
    return cache_dir / f"{name}-{source_hash(src)}" / program


def build_static(cache_dir: Path, name: str, program: str, src: Path, what: str) -> Path:
    """Path of the compiled PROGRAM for the sources in SRC, compiling it if the cache
    lacks it. WHAT names it in errors ("guest init").

    Atomic: the binary is built in a temporary folder beside the target and renamed
    into place, so a concurrent or interrupted build never leaves a half-written file.
    """
    binary = cached_path(cache_dir, name, program, src)
    if binary.is_file():
        return binary
    cc = compiler()
    if shutil.which(cc) is None:
        raise BoxError(f"{what}: compiler {cc!r} not found (install musl-tools)")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    except OSError as e:
        raise BoxError(f"{what}: cannot build into {cache_dir}: {e}") from e
    try:
        sources = [str(p) for p in source_files(src) if p.suffix == ".c"]
        proc = subprocess.run([cc, *CFLAGS, "-I", str(SHARED_HEADERS), "-o", str(tmp / program), *sources],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise BoxError(f"{what}: {cc} failed:\n{proc.stderr.strip()}")
        try:
            tmp.rename(binary.parent)
        except OSError:
            if not binary.is_file():  # not a concurrent build that won the race
                raise
    except OSError as e:
        raise BoxError(f"{what}: cannot build into {cache_dir}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return binary
