"""What a snapshot template's key holds and what a box may start from one: the device
set, not a box's own paths; a named volume's size, not its file; who boots cold."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from a3s_box.drivers.base import BoxLaunch, BoxNetwork, BoxVolume
from a3s_box.drivers.qemu.argv import QemuSpec
from a3s_box.drivers.qemu.driver import (GUEST_DEFAULT_PATH, fork_ineligible, snapshot_ineligible,
                                        template_targets, warm_commands)
from a3s_box.drivers.qemu.argv import RAM_FD, hotplug_devices, qemu_argv
from a3s_box.drivers.qemu.snapshot import Template, clone_spec, snapshot_key, template_spec
from a3s_box.guest.protocol import PREPARE_MAX_TARGETS, BoxConfig
from a3s_box.network.policy import NetworkPolicy


def _spec(tmp: Path, box: str, volumes: tuple[Path, ...] = (), forwards: tuple[tuple[int, int], ...] | None = None
          ) -> QemuSpec:
    kernel = tmp / "vmlinuz"
    kernel.write_bytes(b"kernel")
    run = tmp / box
    return QemuSpec(binary="/bin/true", accel="tcg", vcpus=1, memory_mib=256, kernel=kernel,
                    initramfs=tmp / "initramfs-abc.cpio", console_log=run / "console.log",
                    channel=run / "channel.sock", qmp=run / "qmp.sock", disk=run / "disk.qcow2",
                    volume_disks=volumes, forwards=forwards)


def _disk(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_clones_of_one_template_differ_only_in_their_own_files(tmp_path: Path) -> None:
    a = _spec(tmp_path, "a", (_disk(tmp_path / "vols/a.ext4", 64 << 20),))
    b = _spec(tmp_path, "b", (_disk(tmp_path / "vols/b.ext4", 64 << 20),))
    bigger = _spec(tmp_path, "c", (_disk(tmp_path / "vols/c.ext4", 128 << 20),))
    key = snapshot_key(a, "sha256:img", "7.2")
    assert snapshot_key(b, "sha256:img", "7.2") == key  # the same devices: one template
    assert snapshot_key(bigger, "sha256:img", "7.2") != key  # the guest learnt the volume's size
    assert snapshot_key(_spec(tmp_path, "d"), "sha256:img", "7.2") != key  # no volume device
    net = replace(a, forwards=())
    assert snapshot_key(net, "sha256:img", "7.2") != key  # a NIC is a device too
    assert snapshot_key(replace(net, forwards=((15100, 80),)), "sha256:img", "7.2") != \
        snapshot_key(net, "sha256:img", "7.2")  # QEMU's forwards are in its argv
    # the folders the template's disk has for volumes (PREPARE made them), in any order
    scratch = snapshot_key(a, "sha256:img", "7.2", targets=("/scratch", "/data"))
    assert scratch != key and scratch == snapshot_key(a, "sha256:img", "7.2", targets=("/data", "/scratch"))
    assert snapshot_key(a, "sha256:img", "7.2", targets=("/scratch",)) != scratch


def _launch(tmp: Path, network: bool = False, volumes: tuple[BoxVolume, ...] = ()) -> BoxLaunch:
    return BoxLaunch(box_id="p.x", rundir=tmp, vcpus=1, memory_mib=256, config=BoxConfig(hostname="x"),
                     disk=tmp / "disk.qcow2", image="sha256:img", volumes=volumes,
                     network=BoxNetwork(NetworkPolicy.from_json({"mode": "public"})) if network else None)


def test_who_starts_from_a_snapshot_and_who_forks(tmp_path: Path) -> None:
    tmpfs = BoxVolume(kind="tmpfs", target="/scratch")
    named = BoxVolume(kind="volume", target="/data", source=str(tmp_path / "v.ext4"), name="v")
    bind = BoxVolume(kind="bind", target="/src", source=str(tmp_path))
    microvm = "microvm,x-option-roms=off"
    assert snapshot_ineligible(_launch(tmp_path, network=True, volumes=(tmpfs, named)), microvm) == ""
    # virtio-fs is hot-plugged into a clone's PCIe root port: microvm's, not yet arm64 virt's
    assert snapshot_ineligible(_launch(tmp_path, volumes=(bind,)), microvm) == ""
    assert "virtio-fs" in snapshot_ineligible(_launch(tmp_path, volumes=(bind,)), "virt")
    assert fork_ineligible(_launch(tmp_path, network=True, volumes=(tmpfs,))) == ""
    assert "disk" in fork_ineligible(_launch(tmp_path, volumes=(named,)))
    assert "virtio-fs" in fork_ineligible(_launch(tmp_path, volumes=(bind,)))


def test_a_templates_folders_are_its_building_boxs_volume_targets(tmp_path: Path) -> None:
    vols = (BoxVolume(kind="tmpfs", target="/scratch"), BoxVolume(kind="bind", target="/src", source=str(tmp_path)),
            BoxVolume(kind="tmpfs", target="/scratch"))
    assert template_targets(_launch(tmp_path, volumes=vols)) == ("/scratch", "/src")
    many = tuple(BoxVolume(kind="tmpfs", target=f"/t{i}") for i in range(PREPARE_MAX_TARGETS + 1))
    assert template_targets(_launch(tmp_path, volumes=many)) == ()  # more than PREPARE makes: none


def test_a_template_warms_its_building_boxs_agent_and_the_shell(tmp_path: Path) -> None:
    config = BoxConfig(hostname="x", env=("A=1", "PATH=/opt/bin:/bin"), argv=("agent", "--serve"))
    assert warm_commands(config) == ("/opt/bin:/bin", ("agent", "/bin/sh"))
    assert warm_commands(BoxConfig(hostname="x", argv=("/bin/sh", "-c", "x"))) == (GUEST_DEFAULT_PATH, ("/bin/sh",))
    assert warm_commands(BoxConfig(hostname="x")) == (GUEST_DEFAULT_PATH, ("/bin/sh",))


def test_shares_leave_the_template_and_are_hot_plugged_into_its_clones(tmp_path: Path) -> None:
    share = (tmp_path / "a" / "vfs0" / "sock", "a3svol0")
    box = replace(_spec(tmp_path, "a"), shares=(share,))
    other = replace(_spec(tmp_path, "b"), shares=((tmp_path / "b" / "vfs0" / "sock", "a3svol0"),))
    t = template_spec(box)
    assert t.shares == () and t.hotplug_ports == 1  # vhost-user-fs is not migratable: a port instead
    assert "vhost-user-fs-device" not in " ".join(qemu_argv(t)) and "pcie-root-port,id=hp0" in " ".join(qemu_argv(t))
    key = snapshot_key(t, "sha256:img", "7.2")
    assert snapshot_key(template_spec(other), "sha256:img", "7.2") == key  # whatever folder each shares
    assert key != snapshot_key(_spec(tmp_path, "c"), "sha256:img", "7.2")  # a box without shares: no ports
    two = replace(box, shares=(share, (tmp_path / "a" / "vfs1" / "sock", "a3svol1")))
    assert snapshot_key(template_spec(two), "sha256:img", "7.2") != key

    clone = clone_spec(box, Template("k", tmp_path / "tpl"))
    argv = " ".join(qemu_argv(clone))
    # its own RAM (virtiofsd must see what the guest writes), not the template's file
    assert f"mem-path=/proc/self/fd/{RAM_FD},share=on" in argv and "tpl/ram" not in argv
    assert f"-chardev socket,id=vfs0,path={share[0]}" in argv and "vhost-user-fs" not in argv
    assert hotplug_devices(clone) == [{"driver": "vhost-user-fs-pci", "id": "fs0", "chardev": "vfs0",
                                       "tag": "a3svol0", "bus": "hp0"}]
    assert hotplug_devices(box) == []  # a cold boot has them on its command line
    plain = clone_spec(_spec(tmp_path, "d"), Template("k", tmp_path / "tpl"))
    assert plain.memory_file == tmp_path / "tpl" / "ram" and not plain.memory_shared  # copy-on-write
