"""Apply a KrunSpec to a fresh libkrun context: every step up to krun_start_enter.

Checks what libkrun itself would accept silently (a missing root folder, an existing
socket path) or cannot express (a count that does not fit its C type), so each bad
value is reported here with the box's name, before any VM exists.
"""
from __future__ import annotations

import os
from pathlib import Path

from a3s_box.drivers.krun.library import ROOT_TAG, Krun
from a3s_box.drivers.krun.spec import KrunSpec
from a3s_box.errors import DriverError, HostUnsupported

NO_TSI = 0  # no transparent socket impersonation: a libkrun box's network is none
MAX_VCPUS = 255  # krun_set_vm_config takes a uint8_t
MAX_MEMORY_MIB = 2**32 - 1


def check_spec(spec: KrunSpec, max_vcpus: int = MAX_VCPUS) -> None:
    """What must hold before libkrun sees the spec; raises DriverError naming the box."""
    box = spec.box_id
    if not 1 <= spec.vcpus <= min(max_vcpus, MAX_VCPUS):
        raise DriverError(box, f"vcpus {spec.vcpus}: libkrun takes 1 to "
                          f"{min(max_vcpus, MAX_VCPUS)} here")
    if not 1 <= spec.memory_mib <= MAX_MEMORY_MIB:
        raise DriverError(box, f"memory {spec.memory_mib} MiB: out of range for libkrun")
    if not Path(spec.root).is_dir():
        raise DriverError(box, f"root folder {spec.root} is gone (deleted or never unpacked)")
    if spec.socket and os.path.lexists(spec.socket):
        raise DriverError(box, f"{spec.socket} already exists (libkrun must create it)")
    if not 0 < spec.port < 2**32:
        raise DriverError(box, f"vsock port {spec.port}: out of range")


class Context:
    """One libkrun configuration context; `close()` frees it unless the VM was entered."""

    def __init__(self, krun: Krun, box: str) -> None:
        self.krun = krun
        self.box = box
        self.id = krun.call("krun_create_ctx", box=box, what="create a context")
        self._keep: list[object] = []  # C buffers libkrun may still point to

    def call(self, name: str, *args: object, what: str = "") -> int:
        return self.krun.call(name, self.id, *args, box=self.box, what=what)

    def strings(self, items: tuple[str, ...]) -> object:
        owned = self.krun.strings(items)
        self._keep.append(owned)
        return owned.arr

    def close(self) -> None:
        if self.id >= 0:
            self.krun.call("krun_free_ctx", self.id, box=self.box, what="free the context")
            self.id = -1

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def configure(ctx: Context, spec: KrunSpec) -> None:
    """Every libkrun call for `spec` on `ctx`, in the order libkrun requires."""
    krun = ctx.krun
    max_vcpus = int(krun.fn("krun_get_max_vcpus")()) if krun.has("krun_get_max_vcpus") \
        else MAX_VCPUS
    check_spec(spec, max_vcpus if max_vcpus > 0 else MAX_VCPUS)
    if not krun.paths.firmware:
        raise HostUnsupported("libkrun", "libkrunfw (the guest kernel library) not found: "
                              "install libkrunfw next to libkrun")
    ctx.call("krun_set_vm_config", spec.vcpus, spec.memory_mib,
             what=f"{spec.vcpus} vcpus, {spec.memory_mib} MiB")
    root = spec.root.encode()
    if krun.has("krun_set_root"):
        ctx.call("krun_set_root", root, what=f"root {spec.root}")
    else:  # the smolmachines fork: the same virtio-fs device, by its tag
        ctx.call("krun_add_virtiofs", ROOT_TAG.encode(), root, what=f"root {spec.root}")
    ctx.call("krun_set_workdir", spec.workdir.encode(), what=f"workdir {spec.workdir}")
    # an explicit list: NULL would copy the supervisor's whole environment to the guest
    ctx.call("krun_set_env", ctx.strings(spec.boot_args), what="boot options")
    if spec.rlimits:
        ctx.call("krun_set_rlimits", ctx.strings(spec.rlimits), what="rlimits")
    if spec.socket:
        if krun.has("krun_add_vsock"):
            # newer builds: an explicit vsock device (the fork requires one for ports)
            if krun.has("krun_disable_implicit_vsock"):
                ctx.call("krun_disable_implicit_vsock", what="vsock")
            ctx.call("krun_add_vsock", NO_TSI, what="vsock")
        ctx.call("krun_add_vsock_port2", spec.port, spec.socket.encode(), True,
                 what=f"vsock port {spec.port} <-> {spec.socket}")
    if krun.has("krun_set_console_output"):
        ctx.call("krun_set_console_output", spec.console.encode(), what=f"console {spec.console}")
    # else the implicit console writes to stdout, which the supervisor points at the file
