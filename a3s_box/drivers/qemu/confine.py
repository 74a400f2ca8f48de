"""The jail of one QEMU process (a3s_box.jail): what it sees and which ids it runs as.

`plan_jail` is pure: from the QEMU spec, the files it needs at their host paths (kernel,
initramfs, its disk and that disk's backing chain read-only, its console log, sockets
and the vmm/ folder where QEMU makes its QMP socket, /dev/kvm under KVM). `hand_over`
gives the box's uid the files QEMU writes. `security_level` decides, from what the host
supports and the box's `security`, what is applied, or refuses the box.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from a3s_box.drivers.qemu.argv import QemuSpec, loads_kernel
from a3s_box.disks.qcow2 import backing_chain
from a3s_box.errors import HostUnsupported
from a3s_box.jail import support
from a3s_box.jail.files import give
from a3s_box.jail.spec import Bind, JailSpec, Limits, merge_binds


def security_level(box_id: str, security: str, qemu_binary: str) -> tuple[bool, bool, bool, str]:
    """(jail, cgroup, seccomp) to apply, and what `box ps` shows; strict refuses the box
    where the host lacks any of them."""
    missing = support.missing(qemu_binary)
    if missing and security == "strict":
        lacks = "; ".join(f"{c.name}: {c.detail}" for c in missing)
        raise HostUnsupported("qemu", f"box {box_id}: security: strict, but this host cannot confine its "
                              f"VMM ({lacks}); see `box doctor`, or set security: relaxed to run with "
                              "what it allows")
    names = {c.name for c in missing}
    jail = not names & {"uid", "namespaces"}
    cgroup = jail and "cgroup" not in names
    seccomp = "seccomp" not in names
    label = security if not missing else f"relaxed: no {', '.join(sorted(names))}"
    return jail, cgroup, seccomp, label


def vmm_dir(rundir: Path) -> Path:
    """The one folder a confined QEMU may create files in (its QMP socket)."""
    return rundir / "vmm"


def plan_jail(name: str, rundir: Path, spec: QemuSpec, uid: int, gid: int, groups: tuple[int, ...],
              network: bool, limits: Limits | None, kvm_gid: int | None = None) -> JailSpec:
    binds = [Bind(str(spec.kernel)), Bind(str(spec.initramfs))] if loads_kernel(spec) else []
    binds += [Bind(str(vmm_dir(rundir)), True),
              Bind(str(spec.console_socket), True) if spec.console_socket else Bind(str(spec.console_log), True)]
    if spec.channel is not None:
        binds.append(Bind(str(spec.channel), True))
    if spec.disk is not None:
        binds.append(Bind(str(spec.disk), True))
        binds += [Bind(str(p)) for p in backing_chain(spec.disk)]
    if spec.memory_file is not None:
        binds.append(Bind(str(spec.memory_file), True))
    binds += [Bind(str(d), True) for d in spec.volume_disks]
    binds += [Bind(str(sock), True) for sock, _ in spec.shares]
    binary = shutil.which(spec.binary)
    if binary and not binary.startswith("/usr/"):
        binds.append(Bind(os.path.realpath(binary)))
    extra: tuple[int, ...] = ()
    if spec.accel == "kvm":
        binds.append(Bind("/dev/kvm", True))
        extra = (kvm_gid,) if kvm_gid is not None else ()
    return JailSpec(name=name, uid=uid, gid=gid, groups=tuple(sorted(set(groups + extra))),
                    binds=merge_binds(binds), network="inherit" if network else "none",
                    limits=limits, root=str(rundir / "jail"))


def kvm_group() -> int | None:
    try:
        return os.stat("/dev/kvm").st_gid
    except OSError:
        return None


def hand_over(jail: JailSpec, rundir: Path, spec: QemuSpec) -> None:
    """Make what the confined QEMU writes its uid's: the vmm/ folder, console log, disk
    overlay, named volume disks; and the empty folder its root is mounted on."""
    vmm = vmm_dir(rundir)
    vmm.mkdir(mode=0o700, exist_ok=True)
    Path(jail.root).mkdir(mode=0o700, exist_ok=True)
    own = [vmm, *([spec.disk] if spec.disk else []), *spec.volume_disks]
    if spec.console_socket is None:  # QEMU writes the log itself (else the shim does)
        spec.console_log.touch()
        own.append(spec.console_log)
    if spec.memory_file is not None and spec.memory_file.parent == rundir:
        own.append(spec.memory_file)  # a fork's private RAM file (a template's has its group)
    for path in own:
        give(path, jail.uid, jail.gid)
