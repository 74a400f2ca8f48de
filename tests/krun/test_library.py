"""The binding against the real libkrun: where it is found, symbols, -errno translation."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest

from a3s_box.drivers.krun import library
from a3s_box.drivers.krun.library import CDEF, Krun, LibraryPaths, describe_errno, locate
from a3s_box.errors import DriverError, HostUnsupported


def test_an_explicit_path_that_does_not_exist_is_named(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setenv(library.ENV_LIBRARY, str(tmp_path / "libkrun.so.1"))
    with pytest.raises(HostUnsupported) as e:
        locate()
    assert str(e.value) == f"libkrun: $A3S_BOX_LIBKRUN={tmp_path}/libkrun.so.1: no such file"


def test_an_explicit_path_wins(monkeypatch: pytest.MonkeyPatch, krun: Krun) -> None:
    if not Path(krun.paths.libkrun).is_file():
        pytest.skip("libkrun came from the system loader, not a file path")
    monkeypatch.setenv(library.ENV_LIBRARY, krun.paths.libkrun)
    found = locate()
    assert found.origin == "env" and found.libkrun == krun.paths.libkrun
    assert found.firmware  # libkrunfw beside it, or the system's


def test_a_file_that_is_not_a_library_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    bogus = tmp_path / "libkrun.so.1"
    bogus.write_text("not an ELF file")
    monkeypatch.setenv(library.ENV_LIBRARY, str(bogus))
    with pytest.raises(HostUnsupported, match=f"cannot load {bogus}"):
        Krun(locate())


def test_a_missing_symbol_is_reported_by_name(krun: Krun) -> None:
    declared = [line.split("(")[0].split()[-1] for line in CDEF.splitlines()
                if line.startswith("int32_t")]
    missing = [name for name in declared if not krun.has(name)]
    if not missing:
        pytest.skip("this libkrun exports every function we declare")
    with pytest.raises(HostUnsupported) as e:
        krun.fn(missing[0])
    assert f"lacks {missing[0]}" in str(e.value)


def test_errno_names() -> None:
    assert describe_errno(-errno.EINVAL) == "EINVAL (Invalid argument)"
    assert describe_errno(-errno.ENOENT) == "ENOENT (No such file or directory)"


def test_a_negative_return_becomes_a_driver_error_from_oserror(krun: Krun) -> None:
    with pytest.raises(DriverError) as e:
        krun.call("krun_free_ctx", 987654, box="p.web", what="free")
    assert str(e.value) == ("box p.web: libkrun krun_free_ctx (free): "
                            "ENOENT (No such file or directory)")
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOENT


def test_the_loader_is_loaded_once(krun: Krun) -> None:
    assert library.load() is krun


def test_a_library_without_our_functions_is_too_old_by_name(krun: Krun,
                                                            tmp_path: Path) -> None:
    # a real shared library that is not libkrun: every function we need is missing
    from a3s_box.drivers.krun.probe import host_support
    from a3s_box.home import Home

    other = Krun(LibraryPaths("libz.so.1", krun.paths.firmware, (), "test"))
    got = host_support(Home(tmp_path), krun=other)
    assert not got.usable
    assert got.detail == ("libz.so.1 is too old: it lacks krun_create_ctx, "
                          "krun_set_vm_config, krun_set_workdir, krun_set_env, "
                          "krun_add_vsock_port2, krun_start_enter, krun_set_root; "
                          "upgrade libkrun")


def test_libkrunfw_missing_is_said_plainly(krun: Krun, tmp_path: Path) -> None:
    from a3s_box.drivers.krun.probe import host_support
    from a3s_box.home import Home

    bare = Krun(LibraryPaths(krun.paths.libkrun, "", krun.paths.preload, "test"))
    got = host_support(Home(tmp_path), krun=bare)
    assert (got.usable, got.detail) == (False, "libkrun found, but not libkrunfw (its guest "
                                               "kernel): install libkrunfw")
