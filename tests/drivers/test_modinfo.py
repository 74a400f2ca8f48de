""".modinfo parsing and module load order: pure, on synthetic ELF files and on the real
modules of the provisioned guest kernel."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from a3s_box.drivers.common.artifacts import GuestArtifacts
from a3s_box.drivers.common.kernel import cached_kernel, collect_modules
from a3s_box.drivers.common.modinfo import ModuleError, load_order, parse_modinfo
from a3s_box.home import Home


def make_elf(sections: dict[str, bytes], big_endian: bool = False) -> bytes:
    """A minimal ELF64 relocatable with the given sections (+ .shstrtab)."""
    e = ">" if big_endian else "<"
    names = [""] + list(sections) + [".shstrtab"]
    shstrtab = b"".join(n.encode() + b"\0" for n in names)
    bodies = [b""] + list(sections.values()) + [shstrtab]
    offsets, data = [], b""
    for body in bodies:
        offsets.append(64 + len(data))
        data += body
    shoff = 64 + len(data)
    name_at, at = [], 0
    for n in names:
        name_at.append(at)
        at += len(n) + 1
    headers = b"".join(struct.pack(e + "IIQQQQIIQQ", name_at[i], 1 if i else 0, 0, 0,
                                   offsets[i], len(bodies[i]), 0, 0, 1, 0)
                       for i in range(len(names)))
    ident = b"\x7fELF" + bytes([2, 2 if big_endian else 1, 1]) + b"\0" * 9
    header = ident + struct.pack(e + "HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64,
                                 len(names), len(names) - 1)
    return header + data + headers


def modinfo_section(**fields: str) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in fields.items())


@pytest.mark.parametrize("big_endian", [False, True])
def test_parse_name_and_depends(big_endian: bool) -> None:
    elf = make_elf({".text": b"\x90" * 7,
                    ".modinfo": modinfo_section(license="GPL", depends="virtio,virtio-ring",
                                                name="virtio-blk", vermagic="6.1 SMP")},
                   big_endian)
    info = parse_modinfo(elf, "virtio_blk.ko")
    assert info.name == "virtio_blk"
    assert info.depends == ("virtio", "virtio_ring")
    assert ("vermagic", "6.1 SMP") in info.fields


def test_empty_depends_means_none() -> None:
    info = parse_modinfo(make_elf({".modinfo": modinfo_section(depends="", name="virtio_ring")}),
                         "x.ko")
    assert info.depends == ()


@pytest.mark.parametrize(("data", "message"), [
    (b"MZ\x90\x00", "virtio.ko: not an ELF file"),
    (b"\x7fELF\x01\x01\x01" + b"\0" * 60, "virtio.ko: not a 64-bit ELF file"),
    (b"\x7fELF\x02\x01\x01" + b"\0" * 20, "virtio.ko: malformed ELF section table"),
    (make_elf({".text": b"x"}), "virtio.ko: no .modinfo section (not a kernel module?)"),
    (make_elf({".modinfo": modinfo_section(license="GPL")}), "virtio.ko: .modinfo has no name="),
])
def test_bad_files_are_named(data: bytes, message: str) -> None:
    with pytest.raises(ModuleError, match="^" + message.replace("(", r"\(").replace(")", r"\)")
                       .replace("?", r"\?").replace(".", r"\.")):
        parse_modinfo(data, "virtio.ko")


DEPS = {"virtio_ring": (), "virtio": (), "virtio_mmio": ("virtio", "virtio_ring"),
        "virtio_blk": ("virtio", "virtio_ring"), "virtio_console": ("virtio", "virtio_ring"),
        "vsock": (), "vmw_vsock_virtio_transport_common": ("vsock", "virtio", "virtio_ring"),
        "vmw_vsock_virtio_transport": ("vmw_vsock_virtio_transport_common", "vsock", "virtio",
                                       "virtio_ring"),
        "unwanted": ()}


def test_load_order_puts_dependencies_first_and_is_deterministic() -> None:
    wanted = ["virtio_blk", "vmw_vsock_virtio_transport", "virtio_mmio", "virtio-console"]
    order = load_order(DEPS, wanted)
    assert order == ["virtio", "virtio_ring", "virtio_blk", "virtio_console", "virtio_mmio",
                     "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"]
    assert load_order(DEPS, reversed(wanted)) == order


def test_load_order_reports_missing_modules_and_cycles() -> None:
    with pytest.raises(ModuleError, match="^kernel module virtio_pci not found$"):
        load_order(DEPS, ["virtio_pci"])
    with pytest.raises(ModuleError, match="in a cycle: a, b$"):
        load_order({"a": ("b",), "b": ("a",), "c": ()}, ["a", "c"])


def test_real_kernel_modules_load_in_dependency_order(artifacts: GuestArtifacts,
                                                      test_home: Home) -> None:
    kernel = cached_kernel(test_home.cache)
    assert kernel is not None and kernel.release == artifacts.kernel_release
    names = [m.name for m in kernel.modules]
    for i, m in enumerate(kernel.modules):
        info = parse_modinfo(m.data, m.name)
        assert info.name == m.name
        assert set(info.depends) <= set(names[:i]), f"{m.name} loads before its dependencies"
    assert {"virtio_ring", "virtio", "virtio_mmio", "virtio_console", "virtio_blk"} <= set(names)


def test_collect_modules_reads_a_modules_tree(tmp_path: Path, test_home: Home,
                                              artifacts: GuestArtifacts) -> None:
    kernel = cached_kernel(test_home.cache)
    assert kernel is not None
    tree = tmp_path / "6.1-test" / "kernel" / "drivers"
    tree.mkdir(parents=True)
    for m in kernel.modules:  # module files may be named with dashes
        (tree / f"{m.name.replace('_', '-')}.ko").write_bytes(m.data)
    got = collect_modules(tree.parent.parent, ("virtio_blk",))
    assert [m.name for m in got][-1] == "virtio_blk"
    assert {"virtio", "virtio_ring"} <= {m.name for m in got}
    assert "vsock" not in {m.name for m in got}
