"""The QEMU command line for one box. Pure: a frozen spec in, an argv out.

One place decides every QEMU flag, so the shim, the probe and the tests agree:
    -M microvm (x86_64) / virt (arm64), no firmware ROMs, no default devices
    serial console appended to console.log (kept across restarts, for `box logs`)
    virtio-serial port `a3s.0` on a unix socket the shim listens on
    the root disk as virtio-blk over the box's qcow2 overlay
    a QMP socket for clean control, pause/resume and snapshot save/restore (`incoming`)
    for a box whose virtio-fs shares are hot-plugged after a snapshot restore (QEMU 7.2
    cannot migrate vhost-user-fs): microvm's PCIe host (pcie=on) with a root port per
    share, the shares' sockets on the command line, their devices added over QMP
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

CHANNEL_NAME = "a3s.0"
# A clone's own RAM (drivers/qemu/clone_ram.py) reaches QEMU as this inherited descriptor
RAM_FD = 201
# The guest's side of user-mode networking: its address, the gateway (which also
# answers DNS: the namespace's 127.0.0.1:53, where the box's DNS listens).
GUEST_NET = "10.0.2.0/24"
GUEST_NET_ARG = "a3s.net=10.0.2.15/24,10.0.2.2,10.0.2.2"


@dataclass(frozen=True)
class Arch:
    binary: str
    machine: str
    console: str  # the kernel's name for the serial console


ARCHES = {
    "x86_64": Arch("qemu-system-x86_64", "microvm,x-option-roms=off", "ttyS0"),
    "aarch64": Arch("qemu-system-aarch64", "virt", "ttyAMA0"),
}


def host_arch() -> Arch:
    return ARCHES.get(platform.machine(), ARCHES["x86_64"])


@dataclass(frozen=True)
class QemuSpec:
    binary: str
    accel: str  # "kvm" or "tcg"
    vcpus: int
    memory_mib: int
    kernel: Path
    initramfs: Path
    console_log: Path
    channel: Path | None  # unix socket the shim listens on; None: no guest channel (probe)
    qmp: Path | None
    disk: Path | None = None
    machine: str = ARCHES["x86_64"].machine
    console: str = ARCHES["x86_64"].console
    boot_args: tuple[str, ...] = ()  # extra a3s.* kernel arguments
    incoming: str | None = None  # "defer": wait for QMP migrate-incoming (snapshot clones)
    # Snapshot templates and clones: guest RAM in this file, shared with it (the template
    # writes it) or mapped copy-on-write (clones); None: anonymous RAM
    memory_file: Path | None = None
    memory_shared: bool = False
    tsc_khz: int = 0  # the host's TSC rate, handed to a TCG guest (0: let it calibrate)
    # A virtio-net NIC on user-mode networking (run inside the box's network namespace,
    # where the egress proxy decides every flow), with (namespace port, box port) TCP
    # forwards for published ports. None: no NIC at all.
    forwards: tuple[tuple[int, int], ...] | None = None
    # A virtio-net NIC on a tap of a pod's network namespace (network/podnet.py), given to
    # QEMU as this descriptor, with the MAC of the pod's interface and the guest's a3s.net
    tap: str | None = None
    tap_mac: str = ""
    guest_net: str = ""
    # virtio-fs shares (vhost-user socket, tag); they need the guest's RAM shared with
    # the virtiofsd processes (a memfd backend)
    shares: tuple[tuple[Path, str], ...] = ()
    # PCIe root ports (microvm's pcie=on) that a clone's shares and a pod's NIC are
    # hot-plugged into; with hotplugged, the shares' chardevs and the tap's netdev are on
    # the command line and their devices come over QMP (hotplug_devices) once the
    # template's state is loaded
    hotplug_ports: int = 0
    hotplugged: bool = False
    # Guest RAM is this inherited descriptor (a memfd the shim filled with a template's
    # RAM), mapped shared: virtiofsd must see the pages the guest writes
    memory_fd: int | None = None
    volume_disks: tuple[Path, ...] = ()  # named volumes: /dev/vdb, /dev/vdc, ... in order
    sandbox: str | None = None  # QEMU's seccomp filter (-sandbox VALUE); None: none
    # The serial console to a unix socket the shim listens on (it caps and rotates the
    # log); None: straight into console_log (the probe)
    console_socket: Path | None = None
    extra: tuple[str, ...] = field(default=())


def kernel_cmdline(spec: QemuSpec) -> str:
    # microvm's PCIe host has no MCFG table, so ACPI's _OSC does not hand the kernel the
    # root ports' hotplug: pcie_ports=native takes it (no PCI at all otherwise)
    pci = "pcie_ports=native" if spec.hotplug_ports else "pci=off"
    args = [f"console={spec.console}",
            # no ACPI reset here: a triple-fault reboot plus -no-reboot ends QEMU
            "reboot=t", "panic=-1", "quiet", pci,
            f"a3s.root={'/dev/vda' if spec.disk is not None else 'none'}"]
    if spec.channel is not None:
        args.append(f"a3s.channel=virtio-serial:{CHANNEL_NAME}")
    else:
        args.append("a3s.channel=none")
    if spec.accel == "tcg" and spec.tsc_khz:
        # Under TCG on a busy host the kernel's PIT calibration of the TSC fails often;
        # it then has no clocksource and hangs at 0.000000. The guest TSC is the host's,
        # so tell it the rate and skip the (noisy) watchdog.
        args += [f"tsc_early_khz={spec.tsc_khz}", "tsc=reliable"]
    if spec.forwards is not None:
        args.append(GUEST_NET_ARG)
    elif spec.tap is not None:
        args.append(spec.guest_net)
    args.extend(spec.boot_args)
    return " ".join(args)


def host_tsc_khz(cpuinfo: str) -> int:
    """The host's TSC rate from /proc/cpuinfo text (pure; 0 if unknown). With
    constant_tsc the reported clock is the TSC's; without it we cannot tell."""
    if "constant_tsc" not in cpuinfo:
        return 0
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "cpu MHz":
            try:
                return int(float(value) * 1000)
            except ValueError:
                return 0
    return 0


def read_host_tsc_khz() -> int:
    try:
        return host_tsc_khz(Path("/proc/cpuinfo").read_text())
    except OSError:
        return 0


# TCG's translated-code cache defaults to 1 GiB, touched as the guest runs new code: a box
# that ran enough programs outgrew its cgroup (guest RAM + jail.spec.VMM_OVERHEAD_TCG) and
# was OOM-killed. Bounded here, inside that overhead; a full cache is flushed, not grown.
TCG_CODE_CACHE_MIB = 128


def loads_kernel(spec: QemuSpec) -> bool:
    """Whether QEMU is given the kernel, initramfs and command line. A microvm clone
    (`incoming`) is not: its RAM already holds the booted kernel, and QEMU would keep
    both files in its own memory for a reboot that -no-reboot rules out (13.5 MiB of
    anonymous memory per box with Debian's kernel). The arm64 `virt` machine keeps them:
    its clones are untested without."""
    return spec.incoming is None or not spec.machine.startswith("microvm")


def _opt(path: Path) -> str:
    # QEMU splits options on ","; a comma in a path is written doubled
    return str(path).replace(",", ",,")


def hotplug_devices(spec: QemuSpec) -> list[dict[str, str]]:
    """QMP device_add arguments of SPEC's hot-plugged shares and pod NIC, a root port each."""
    if not spec.hotplugged:
        return []
    devices = [{"driver": "vhost-user-fs-pci", "id": f"fs{i}", "chardev": f"vfs{i}", "tag": tag, "bus": f"hp{i}"}
               for i, (_sock, tag) in enumerate(spec.shares)]
    if spec.tap is not None:
        devices.append({"driver": "virtio-net-pci", "id": "nic0", "netdev": "net0", "mac": spec.tap_mac,
                        "bus": f"hp{len(devices)}"})
    return devices


def qemu_argv(spec: QemuSpec) -> list[str]:
    plugged = len(spec.shares) + (spec.tap is not None)
    if spec.hotplugged and plugged > spec.hotplug_ports:
        raise ValueError(f"{plugged} devices to hot-plug, {spec.hotplug_ports} root ports")
    shared_memory = spec.shares or spec.memory_file or spec.memory_fd is not None
    machine = spec.machine + (",pcie=on" if spec.hotplug_ports else "")
    argv = [spec.binary,
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-M", machine + (",memory-backend=mem" if shared_memory else ""),
            "-accel", f"tcg,tb-size={TCG_CODE_CACHE_MIB}" if spec.accel == "tcg" else spec.accel,
            "-smp", str(spec.vcpus),
            "-m", f"{spec.memory_mib}M"]
    if loads_kernel(spec):
        argv += ["-kernel", str(spec.kernel), "-initrd", str(spec.initramfs), "-append", kernel_cmdline(spec)]
    argv += ["-chardev", f"socket,id=con,path={_opt(spec.console_socket)}" if spec.console_socket else
            f"file,id=con,path={_opt(spec.console_log)},append=on",
            "-serial", "chardev:con"]
    if spec.accel == "kvm":
        argv += ["-cpu", "host"]
    if spec.memory_fd is not None:
        argv += ["-object", f"memory-backend-file,id=mem,size={spec.memory_mib}M,"
                 f"mem-path=/proc/self/fd/{spec.memory_fd},share=on",
                 "-global", "migration.store-global-state=off"]
    elif spec.memory_file is not None:
        argv += ["-object", f"memory-backend-file,id=mem,size={spec.memory_mib}M,"
                 f"mem-path={_opt(spec.memory_file)},share={'on' if spec.memory_shared else 'off'}",
                 # the template's run state is not carried: -S below decides
                 "-global", "migration.store-global-state=off"]
    elif spec.shares:
        argv += ["-object", f"memory-backend-memfd,id=mem,size={spec.memory_mib}M,share=on"]
    if spec.shares and not spec.hotplugged:
        # virtiofsd (libvhost-user) serves modern virtio only; microvm's mmio is legacy by
        # default (hot-plugged shares are PCI devices: the mmio ones stay as the template's)
        argv += ["-global", "virtio-mmio.force-legacy=false"]
    for i in range(spec.hotplug_ports):
        argv += ["-device", f"pcie-root-port,id=hp{i},bus=pcie.0,chassis={i + 1}"]
    if spec.channel is not None:
        argv += ["-device", "virtio-serial-device",
                 "-chardev", f"socket,id=a3s,path={_opt(spec.channel)}",
                 "-device", f"virtserialport,chardev=a3s,name={CHANNEL_NAME}"]
    if spec.disk is not None:
        argv += ["-drive", f"id=root,if=none,format=qcow2,discard=unmap,werror=report,"
                 f"rerror=report,file={_opt(spec.disk)}",  # the guest sees I/O errors; QEMU must not freeze
                 "-device", "virtio-blk-device,drive=root"]
    for i, disk in enumerate(spec.volume_disks):
        argv += ["-drive", f"id=vol{i},if=none,format=raw,discard=unmap,werror=report,rerror=report,"
                 f"file={_opt(disk)}", "-device", f"virtio-blk-device,drive=vol{i}"]
    for i, (sock, tag) in enumerate(spec.shares):
        argv += ["-chardev", f"socket,id=vfs{i},path={_opt(sock)}"]
        if not spec.hotplugged:
            argv += ["-device", f"vhost-user-fs-device,chardev=vfs{i},tag={tag}"]
    if spec.forwards is not None:
        fwd = "".join(f",hostfwd=tcp:127.0.0.1:{inner}-:{box}" for inner, box in spec.forwards)
        argv += ["-netdev", f"user,id=net0,ipv6=off,net={GUEST_NET}{fwd}",
                 # no gratuitous ARP from the guest after a restore: user-mode networking
                 # has no switch to teach, and every clone would run the kernel's path
                 "-device", "virtio-net-device,netdev=net0,guest_announce=off"]
    elif spec.tap is not None:
        argv += ["-netdev", f"tap,id=net0,fd={spec.tap}"]
        if not spec.hotplugged:
            argv += ["-device", f"virtio-net-device,netdev=net0,mac={spec.tap_mac}"]
    if spec.qmp is not None:
        argv += ["-qmp", f"unix:{_opt(spec.qmp)},server=on,wait=off"]
    if spec.incoming is not None:
        # -S: a loaded clone stays paused until told `cont` (without it QEMU starts the vCPUs
        # the moment the state is in, and a parked pool member ran, using CPU and memory)
        argv += ["-S", "-incoming", spec.incoming]
    if spec.sandbox is not None:
        argv += ["-sandbox", spec.sandbox]
    argv += list(spec.extra)
    return argv
