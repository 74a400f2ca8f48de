"""Which confinements this host gives a box's VMM: `box doctor` prints them, and
`security: strict` (the default) refuses a box where one is missing."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass

from a3s_box import subids
from a3s_box.jail import cgroup

QEMU_SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


@dataclass(frozen=True)
class Confinement:
    name: str  # uid | namespaces | seccomp | cgroup
    ok: bool
    detail: str


@functools.lru_cache(maxsize=8)
def _seccomp(qemu_binary: str) -> Confinement:
    found = shutil.which(qemu_binary)
    if found is None:
        return Confinement("seccomp", False, f"{qemu_binary} not found")
    r = subprocess.run([found, "-sandbox", QEMU_SANDBOX, "-version"], capture_output=True, text=True,
                       timeout=20)
    if r.returncode != 0:
        return Confinement("seccomp", False, "QEMU has no seccomp sandbox: "
                           + (r.stderr.strip().splitlines() or ["?"])[-1])
    return Confinement("seccomp", True, f"QEMU -sandbox {QEMU_SANDBOX}")


@functools.lru_cache(maxsize=1)
def _namespaces() -> Confinement:
    """Each VMM's namespaces: as root, made by the shim and the VMM; without root, the
    same inside the box's own user namespace (which needs the user's subordinate ids)."""
    rootless = os.geteuid() != 0
    if rootless and subids.subordinate_ids() is None:
        return Confinement("namespaces", False, f"a user namespace with the user's subordinate ids is needed: "
                           f"{subids.why_not()}")
    tool = shutil.which("unshare")
    if tool is None:
        return Confinement("namespaces", False, "unshare (util-linux) not found to check with")
    flags = ["--user", "--map-root-user"] if rootless else []
    r = subprocess.run([tool, "--mount", "--ipc", "--uts", "--net", "--pid", "--fork", *flags, "true"],
                       capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        return Confinement("namespaces", False, f"cannot create namespaces: {r.stderr.strip()}")
    if rootless:
        return Confinement("namespaces", True, "mount (pivot_root), PID, IPC, UTS and network namespaces in "
                           "the box's own user namespace")
    return Confinement("namespaces", True, "mount (pivot_root), PID, IPC, UTS and network namespaces")


def confinements(qemu_binary: str) -> list[Confinement]:
    if os.geteuid() == 0:
        uid = Confinement("uid", True, "a uid of its own per box, no capabilities, no_new_privs")
    elif subids.subordinate_ids() is not None:
        uid = Confinement("uid", True, "an id of its own per box from the user's subordinate range "
                          "(newuidmap), no capabilities, no_new_privs")
    else:
        uid = Confinement("uid", False, f"without root, each VMM's id comes from the user's subordinate "
                          f"range: {subids.why_not()}")
    ok, detail = cgroup.support()
    return [uid, _namespaces(), _seccomp(qemu_binary), Confinement("cgroup", ok, detail)]


def missing(qemu_binary: str) -> list[Confinement]:
    return [c for c in confinements(qemu_binary) if not c.ok]
