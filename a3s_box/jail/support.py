"""Which confinements this host gives a box's VMM: `box doctor` prints them, and
`security: strict` (the default) refuses a box where one is missing."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass

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
    tool = shutil.which("unshare")
    if os.geteuid() != 0:
        return Confinement("namespaces", False, "needs root (a3s-box makes each VMM's namespaces as root)")
    if tool is None:
        return Confinement("namespaces", False, "unshare (util-linux) not found to check with")
    r = subprocess.run([tool, "--mount", "--ipc", "--uts", "--net", "--pid", "--fork", "true"],
                       capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        return Confinement("namespaces", False, f"cannot create namespaces: {r.stderr.strip()}")
    return Confinement("namespaces", True, "mount (pivot_root), PID, IPC, UTS and network namespaces")


def confinements(qemu_binary: str) -> list[Confinement]:
    uid = (Confinement("uid", True, "a uid of its own per box, no capabilities, no_new_privs")
           if os.geteuid() == 0 else
           Confinement("uid", False, "a3s-box is not running as root, so it cannot give each VMM a uid "
                       "of its own"))
    ok, detail = cgroup.support()
    return [uid, _namespaces(), _seccomp(qemu_binary), Confinement("cgroup", ok, detail)]


def missing(qemu_binary: str) -> list[Confinement]:
    return [c for c in confinements(qemu_binary) if not c.ok]
