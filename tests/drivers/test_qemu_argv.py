"""The QEMU command line and kernel arguments: pure, pinned as text."""
from __future__ import annotations

from pathlib import Path

from a3s_box.drivers.qemu.argv import QemuSpec, host_tsc_khz, kernel_cmdline, qemu_argv

SPEC = QemuSpec(binary="qemu-system-x86_64", accel="tcg", vcpus=2, memory_mib=512,
                kernel=Path("/c/vmlinuz"), initramfs=Path("/c/initrd.gz"),
                console_log=Path("/run/b/console.log"), channel=Path("/run/b/channel.sock"),
                qmp=Path("/run/b/qmp.sock"), disk=Path("/run/b/disk.qcow2"), tsc_khz=2596140)


def test_full_box_argv() -> None:
    assert " ".join(qemu_argv(SPEC)) == (
        "qemu-system-x86_64 -nodefaults -no-user-config -nographic -no-reboot"
        " -M microvm,x-option-roms=off -accel tcg,tb-size=128 -smp 2 -m 512M"
        " -kernel /c/vmlinuz -initrd /c/initrd.gz"
        " -append console=ttyS0 reboot=t panic=-1 quiet pci=off a3s.root=/dev/vda"
        " a3s.channel=virtio-serial:a3s.0 tsc_early_khz=2596140 tsc=reliable"
        " -chardev file,id=con,path=/run/b/console.log,append=on -serial chardev:con"
        " -device virtio-serial-device -chardev socket,id=a3s,path=/run/b/channel.sock"
        " -device virtserialport,chardev=a3s,name=a3s.0"
        " -drive id=root,if=none,format=qcow2,discard=unmap,werror=report,rerror=report,file=/run/b/disk.qcow2"
        " -device virtio-blk-device,drive=root"
        " -qmp unix:/run/b/qmp.sock,server=on,wait=off")


def test_kvm_uses_the_host_cpu_and_no_tsc_hints() -> None:
    from dataclasses import replace

    kvm = replace(SPEC, accel="kvm")
    argv = qemu_argv(kvm)
    assert argv[argv.index("-cpu") + 1] == "host"
    assert "tsc_early_khz" not in kernel_cmdline(kvm)


def test_probe_form_has_no_disk_channel_or_qmp() -> None:
    from dataclasses import replace

    probe = replace(SPEC, channel=None, qmp=None, disk=None, tsc_khz=0)
    argv = qemu_argv(probe)
    assert "-drive" not in argv and "-qmp" not in argv and "virtio-serial-device" not in argv
    assert kernel_cmdline(probe).endswith("a3s.root=none a3s.channel=none")


def test_commas_in_paths_are_escaped_for_qemu() -> None:
    from dataclasses import replace

    argv = qemu_argv(replace(SPEC, disk=Path("/a,b/disk.qcow2")))
    assert "id=root,if=none,format=qcow2,discard=unmap,werror=report,rerror=report,file=/a,,b/disk.qcow2" in argv


def test_snapshot_restore_plugs_in_as_incoming() -> None:
    from dataclasses import replace

    argv = qemu_argv(replace(SPEC, incoming="file:/run/b/snap"))
    assert argv[-3:] == ["-S", "-incoming", "file:/run/b/snap"]  # paused once loaded: the driver says cont


def test_a_microvm_clone_is_not_handed_the_kernel_it_already_runs() -> None:
    from dataclasses import replace

    from a3s_box.drivers.qemu.confine import plan_jail

    clone = replace(SPEC, incoming="defer")
    argv = qemu_argv(clone)
    assert not {"-kernel", "-initrd", "-append"} & set(argv)
    jail = plan_jail("p.b", Path("/run/b"), clone, 5000, 5000, (), network=False, limits=None)
    assert not {"/c/vmlinuz", "/c/initrd.gz"} & {b.path for b in jail.binds}
    # a cold boot has them; so does an arm64 clone (its `virt` machine is untested without)
    assert "-kernel" in qemu_argv(SPEC) and "-kernel" in qemu_argv(replace(clone, machine="virt"))


def test_host_tsc_rate_from_cpuinfo() -> None:
    info = "processor\t: 0\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\ncpu MHz\t\t: 2596.140\n"
    assert host_tsc_khz(info) == 2596140
    assert host_tsc_khz(info.replace("constant_tsc ", "")) == 0  # rate varies: let it calibrate
    assert host_tsc_khz("flags : constant_tsc\n") == 0


def test_the_tcg_code_cache_is_bounded_inside_the_cgroups_overhead() -> None:
    """QEMU's default 1 GiB code cache outgrew the box's cgroup (an OOM kill after some 50
    curl runs in a box): the bound leaves half the TCG overhead for QEMU's own memory."""
    from a3s_box.drivers.qemu.argv import TCG_CODE_CACHE_MIB
    from a3s_box.jail.spec import VMM_OVERHEAD_TCG
    assert f"tcg,tb-size={TCG_CODE_CACHE_MIB}" in qemu_argv(SPEC)
    assert TCG_CODE_CACHE_MIB << 20 <= VMM_OVERHEAD_TCG // 2


def test_a_pod_nic_is_the_tap_descriptor_with_the_pods_mac_and_address() -> None:
    from dataclasses import replace

    pod = replace(SPEC, tap="200", tap_mac="2a:5f:00:11:22:33", guest_net="a3s.net=10.88.0.7/16,10.88.0.1,-,1450")
    argv = qemu_argv(pod)
    assert argv[argv.index("-netdev") + 1] == "tap,id=net0,fd=200"
    assert "virtio-net-device,netdev=net0,mac=2a:5f:00:11:22:33" in argv
    assert kernel_cmdline(pod).endswith("a3s.net=10.88.0.7/16,10.88.0.1,-,1450")
    assert "hostfwd" not in " ".join(argv) and "user,id=net0" not in " ".join(argv)


def test_a_template_for_hot_plugged_shares_has_pcie_root_ports() -> None:
    from dataclasses import replace

    spec = replace(SPEC, hotplug_ports=2)
    argv = " ".join(qemu_argv(spec))
    assert "-M microvm,x-option-roms=off,pcie=on" in argv
    assert ("-device pcie-root-port,id=hp0,bus=pcie.0,chassis=1 -device pcie-root-port,id=hp1,bus=pcie.0,chassis=2"
            in argv)
    # microvm's PCIe host has no MCFG table: without pcie_ports=native no port hot-plugs
    assert "pcie_ports=native" in kernel_cmdline(spec) and "pci=off" not in kernel_cmdline(spec)
    assert "virtio-mmio.force-legacy" not in argv  # the mmio devices stay as a cold box's


def test_more_shares_to_hot_plug_than_ports_is_refused() -> None:
    from dataclasses import replace

    import pytest

    spec = replace(SPEC, shares=((Path("/s0"), "t0"),), hotplugged=True)
    with pytest.raises(ValueError):
        qemu_argv(spec)
