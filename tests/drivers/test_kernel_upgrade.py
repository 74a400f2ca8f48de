"""A kernel provisioned before virtio_pci was wanted (an upgraded host): it still serves,
so a host offline after the upgrade keeps its boxes, with nothing hot-plugged (such boxes
boot cold, saying why); `box setup` provisions a complete one, and keeps the older one
when it cannot."""
from __future__ import annotations

from pathlib import Path

import pytest

from a3s_box.drivers.base import BoxLaunch, BoxVolume
from a3s_box.drivers.common import kernel as k
from a3s_box.drivers.common.modinfo import canonical
from a3s_box.drivers.qemu.driver import snapshot_ineligible
from a3s_box.guest.protocol import BoxConfig


def _provisioned(cache: Path, names: list[str]) -> None:
    root = cache / "kernels" / "6.1-old"
    (root / "modules").mkdir(parents=True)
    (root / "vmlinuz").write_bytes(b"kernel")
    for n in names:
        (root / "modules" / f"{n}.ko").write_bytes(b"\0")
    (root / "modules" / "load").write_text("\n".join(f"{n}.ko" for n in names) + "\n")
    (cache / "kernels" / "current").write_text("6.1-old\n")


def test_an_older_kernel_serves_without_hotplug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(k.ENV_KERNEL, raising=False)
    _provisioned(tmp_path, [canonical(w) for w in k.WANTED_MODULES if w != k.HOTPLUG_MODULE])
    older = k.cached_kernel(tmp_path)
    assert older is not None and not older.pci_hotplug
    assert k.cached_kernel(tmp_path, complete=True) is None  # `box setup` wants a new one

    said: list[str] = []

    def offline(cache: Path, progress: k.Progress) -> k.Kernel:
        raise k.KernelError("apt-get download failed: no network")
    monkeypatch.setattr(k, "_provision_debian", offline)
    kept = k.ensure_kernel(tmp_path, said.append, complete=True)
    assert kept.release == "6.1-old" and "kept kernel 6.1-old without virtio_pci" in said[0]

    launch = BoxLaunch(box_id="p.x", rundir=tmp_path, vcpus=1, memory_mib=256, config=BoxConfig(hostname="x"),
                       disk=tmp_path / "disk.qcow2", image="sha256:img",
                       volumes=(BoxVolume(kind="bind", target="/src", source=str(tmp_path)),))
    assert "no virtio_pci" in snapshot_ineligible(launch, "microvm", pci_hotplug=False)
    assert snapshot_ineligible(launch, "microvm", pci_hotplug=True) == ""


def test_a_kernel_missing_a_required_module_is_provisioned_anew(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(k.ENV_KERNEL, raising=False)
    _provisioned(tmp_path, ["virtio_mmio"])
    assert k.cached_kernel(tmp_path) is None
