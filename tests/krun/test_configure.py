"""Every libkrun call up to krun_start_enter, on real contexts of the real library."""
from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path
from typing import TypedDict

import pytest

from a3s_box.drivers.krun.configure import Context, check_spec, configure
from a3s_box.drivers.krun.library import Krun, LibraryPaths
from a3s_box.drivers.krun.spec import KrunSpec, box_spec, rlimit_words
from a3s_box.errors import DriverError, HostUnsupported


@pytest.fixture
def spec(tmp_path: Path) -> KrunSpec:
    (tmp_path / "root").mkdir()
    return box_spec("p.web", 2, 512, str(tmp_path / "root"), str(tmp_path / "guest.sock"),
                    str(tmp_path / "console.log"))


def test_a_whole_box_configures(krun: Krun, spec: KrunSpec) -> None:
    spec = replace(spec, rlimits=rlimit_words({"nofile": (1024, 4096), "nproc": (64, 64)}),
                   workdir="/srv")
    with Context(krun, spec.box_id) as ctx:
        assert ctx.id >= 0
        configure(ctx, spec)
    assert not Path(spec.socket).exists()  # libkrun makes it only once the guest is up


def test_two_contexts_are_independent(krun: Krun, spec: KrunSpec, tmp_path: Path) -> None:
    with Context(krun, "a") as a, Context(krun, "b") as b:
        assert a.id != b.id
        configure(a, spec)
        configure(b, replace(spec, box_id="b", socket=str(tmp_path / "other.sock")))


@pytest.mark.parametrize(("vcpus", "mib"), [(0, 512), (1, 0)])
def test_the_library_rejects_bad_sizes(krun: Krun, vcpus: int, mib: int) -> None:
    # straight to libkrun, past our own checks: its -EINVAL, translated
    with Context(krun, "p.web") as ctx, pytest.raises(DriverError) as e:
        ctx.call("krun_set_vm_config", vcpus, mib, what=f"{vcpus} vcpus, {mib} MiB")
    assert str(e.value) == (f"box p.web: libkrun krun_set_vm_config ({vcpus} vcpus, {mib} "
                            "MiB): EINVAL (Invalid argument)")


class _SizeChange(TypedDict, total=False):  # the KrunSpec fields the test below changes
    vcpus: int
    memory_mib: int
    port: int


@pytest.mark.parametrize(("change", "message"), [
    ({"vcpus": 0}, "vcpus 0: libkrun takes 1 to "),
    ({"vcpus": 256}, "vcpus 256: libkrun takes 1 to "),
    ({"memory_mib": 0}, "memory 0 MiB: out of range"),
    ({"memory_mib": 2**32}, "memory 4294967296 MiB: out of range"),
    ({"port": 0}, "vsock port 0: out of range"),
])
def test_values_libkrun_cannot_take_are_named(krun: Krun, spec: KrunSpec,
                                              change: _SizeChange, message: str) -> None:
    with Context(krun, "p.web") as ctx, pytest.raises(DriverError) as e:
        configure(ctx, replace(spec, **change))
    assert str(e.value).startswith(f"box p.web: {message}")


def test_a_vanished_root_folder_is_named(spec: KrunSpec) -> None:
    Path(spec.root).rmdir()
    with pytest.raises(DriverError) as e:
        check_spec(spec)
    assert str(e.value) == (f"box p.web: root folder {spec.root} is gone (deleted or never "
                            "unpacked)")


def test_an_existing_socket_path_is_refused(spec: KrunSpec) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(spec.socket)  # a stale socket left by a VM killed before it could clean up
        with pytest.raises(DriverError, match="guest.sock already exists"):
            check_spec(spec)


def test_without_libkrunfw_nothing_is_configured(krun: Krun, spec: KrunSpec) -> None:
    # the same real library, as if libkrunfw had not been found beside it
    bare = Krun(LibraryPaths(krun.paths.libkrun, "", krun.paths.preload, "test"))
    with Context(bare, "p.web") as ctx, pytest.raises(HostUnsupported) as e:
        configure(ctx, spec)
    assert "libkrunfw (the guest kernel library) not found" in str(e.value)


def test_a_context_is_freed_once(krun: Krun) -> None:
    ctx = Context(krun, "p.web")
    ctx_id = ctx.id
    ctx.close()
    ctx.close()  # a no-op: already freed
    with pytest.raises(DriverError, match="ENOENT"):
        krun.call("krun_free_ctx", ctx_id, box="p.web")
