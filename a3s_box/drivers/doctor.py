"""What works on this host, one check at a time, for `box doctor` and `box setup`.

Reads only: it never downloads or builds (setup does that first), and boots a probe
guest only when the cached KVM verdict is missing, stale or `refresh` is asked for.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass

from a3s_box.drivers.common.artifacts import GuestArtifacts, build_initramfs, existing_guest_artifacts
from a3s_box.drivers.common.kernel import cached_kernel
from a3s_box.drivers.qemu.probe import KVM, probe_accelerators, qemu_version
from a3s_box.drivers.qemu.argv import host_arch
from a3s_box.errors import BoxError
from a3s_box.home import Home


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    essential: bool = True  # a failed essential check means no box can run

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _initramfs_for(home: Home) -> GuestArtifacts | None:
    # from what is cached only: writing the initramfs is local and cheap, fetching is not
    kernel, init = existing_guest_artifacts(home)
    if kernel is None or init is None:
        return None
    try:
        return GuestArtifacts(kernel.vmlinuz, build_initramfs(home.cache, init, kernel),
                              kernel.release, init)
    except OSError:
        return None


def host_checks(home: Home, qemu_binary: str | None = None, refresh: bool = False) -> list[Check]:
    binary = qemu_binary or os.environ.get("A3S_BOX_QEMU") or host_arch().binary  # as the driver
    checks: list[Check] = [mode_check(home)]
    found = shutil.which(binary)
    version = ""
    if found is None:
        checks.append(Check("qemu", False, f"{binary} not found: install qemu-system "
                                           "(scripts/setup.sh does)"))
    else:
        try:
            version = qemu_version(binary)
            checks.append(Check("qemu", True, f"{found} {version}"))
        except BoxError as e:
            checks.append(Check("qemu", False, str(e)))
    try:
        kernel = cached_kernel(home.cache)
    except BoxError as e:
        checks.append(Check("kernel", False, str(e)))
        kernel = None
    else:
        checks.append(Check("kernel", True, f"{kernel.release} ({kernel.vmlinuz}, "
                                            f"{len(kernel.modules)} modules)") if kernel else
                      Check("kernel", False, "not provisioned: run `box setup`"))
    _, init = existing_guest_artifacts(home)
    checks.append(Check("guest-init", True, str(init)) if init else
                  Check("guest-init", False, "not built: run `box setup` (needs musl-tools)"))
    art = _initramfs_for(home)
    if version and art is not None:
        try:
            probe = probe_accelerators(home, binary, art, refresh=refresh)
            checks.append(Check("kvm", probe.kvm_usable,
                                probe.detail + (" [cached]" if probe.cached else ""),
                                essential=False))
            checks.append(Check("accelerator", True, f"qemu/{probe.accel}"))
        except BoxError as e:
            checks.append(Check("kvm", False, str(e), essential=False))
    else:
        kvm = "present" if KVM.exists() else "absent"
        checks.append(Check("kvm", False, f"/dev/kvm {kvm}; not probed (needs qemu, kernel "
                                          "and guest init)", essential=False))
        checks.append(Check("accelerator", False, "none until the checks above pass"))
    from a3s_box.drivers.krun import host_support as krun_support

    krun = krun_support(home, refresh=refresh, build=False)
    checks.append(Check("libkrun", krun.usable, krun.detail, essential=False))
    from a3s_box.drivers.common.boxnet import network_support

    net_ok, net_detail = network_support()
    checks.append(Check("network", net_ok, f"qemu: {net_detail}; libkrun: mode none only "
                        "(an empty network namespace, no TSI)", essential=False))
    checks.append(confinement_check(binary))
    checks.append(snapshot_check(home))
    return checks


def mode_check(home: Home) -> Check:
    """Root or rootless, and what that means for this user's boxes."""
    if os.geteuid() == 0:
        return Check("mode", True, f"root: {home.root}; each box's VMM can get a uid, namespaces and a "
                     "cgroup of its own (security: strict)", essential=False)
    try:
        import pwd

        who = pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        who = str(os.geteuid())
    return Check("mode", True, f"rootless ({who}, uid {os.geteuid()}): boxes, images, secrets and sockets in "
                 f"{home.root}, yours alone; networks in user namespaces of yours, with an egress daemon of "
                 "yours; a VMM of its own uid, namespaces and cgroup needs root for now (security: relaxed; "
                 "see confinement)", essential=False)


def confinement_check(qemu_binary: str) -> Check:
    """How each box's VMM is confined here; what `security: strict` would refuse."""
    from a3s_box.jail.support import confinements

    cs = confinements(qemu_binary)
    missing = [c.name for c in cs if not c.ok]
    detail = "; ".join(f"{c.name}: {c.detail}" for c in cs)
    if missing:
        detail = (f"boxes with security: strict (the default) are refused here, for want of "
                  f"{', '.join(missing)}; security: relaxed runs without them. {detail}")
    return Check("confinement", not missing, detail, essential=False)


def snapshot_check(home: Home) -> Check:
    """Snapshot starts: what the store holds, and what boots cold regardless."""
    from a3s_box.drivers.qemu.snapshot import TemplateStore

    entries = TemplateStore(home.cache).entries()
    usable = sum(1 for e in entries if e["kind"] == "template")
    size = sum(int(e["disk_and_memory_bytes"]) for e in entries) >> 20
    try:
        kernel = cached_kernel(home.cache)
    except BoxError:
        kernel = None
    binds = ("bind volumes and pods boot cold: this home's guest kernel has no virtio_pci to take hot-plugged "
             "devices (`box setup` provisions it)" if kernel is not None and not kernel.pci_hotplug else
             "bind volumes included (virtio-fs, hot-plugged into each clone: QEMU 7.2 cannot migrate it)")
    return Check("snapshots", True, f"qemu: boxes start as clones of templates ({usable} ready, "
                 f"{len(entries)} in the store, {size} MiB; `box snapshot ls`), networks, secrets, named "
                 f"volumes and tmpfs included; {binds}; libkrun: every box boots cold (libkrun has no API "
                 "to save or restore a VM)", essential=False)
