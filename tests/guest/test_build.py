"""Building the guest init into the cache: reuse, rebuild on change, clear failures."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from a3s_box.errors import BoxError
from a3s_box.guest import build


def test_builds_a_static_binary_once_and_reuses_it(tmp_path: Path) -> None:
    first = build.build_guest_init(tmp_path)
    assert first.name == "init" and first.parent.name.startswith("guest-init-")
    assert first.read_bytes()[:4] == b"\x7fELF"
    mtime = first.stat().st_mtime_ns
    again = build.build_guest_init(tmp_path)
    assert again == first and again.stat().st_mtime_ns == mtime
    # only the finished folder remains: no temporary build folders
    assert [p.name for p in tmp_path.iterdir()] == [first.parent.name]


def test_binary_needs_no_shared_libraries(tmp_path: Path) -> None:
    # PID 1 runs before any root disk is mounted: the ELF must have no PT_INTERP header
    data = build.build_guest_init(tmp_path).read_bytes()
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    assert types and 3 not in types  # 3 = PT_INTERP


def _copy_sources(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(build.SOURCES, src)
    return src


def test_changed_sources_give_a_new_binary(tmp_path: Path) -> None:
    src = _copy_sources(tmp_path)
    one = build.build_guest_init(tmp_path / "cache", src)
    (src / "main.c").write_text((src / "main.c").read_text() + "\n/* changed */\n")
    two = build.build_guest_init(tmp_path / "cache", src)
    assert one != two and one.exists() and two.exists()
    # an edit of the same size is seen too (the per-process hash is kept by size and time)
    (src / "main.c").write_text((src / "main.c").read_text().replace("/* changed */", "/* CHANGED */"))
    three = build.build_guest_init(tmp_path / "cache", src)
    assert three not in (one, two)


def test_compiler_errors_are_a_box_error_with_the_message(tmp_path: Path) -> None:
    src = _copy_sources(tmp_path)
    (src / "main.c").write_text((src / "main.c").read_text() + "\nint broken( {\n")
    with pytest.raises(BoxError, match=r"guest init: musl-gcc failed:\n.*main\.c:\d+"):
        build.build_guest_init(tmp_path / "cache", src)
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-built is left


def test_missing_compiler_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("A3S_GUEST_CC", "no-such-cc-a3s")
    with pytest.raises(BoxError, match="compiler 'no-such-cc-a3s' not found"):
        build.build_guest_init(tmp_path)
