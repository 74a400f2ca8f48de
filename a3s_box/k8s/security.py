"""A container's security context from its OCI spec, as /.a3s/container flags (the
guest applies them: guest/init/secctx.c).

Threat: a pod's containers are hostile code that the cluster confines with a security
context (runAsUser, capabilities, allowPrivilegeEscalation, readOnlyRootFilesystem,
seccomp, the masked and read-only /proc paths containerd puts in every spec). Ignoring
any of it would run the code as root with every capability in the pod's VM, free to
take over the VM and the pod's other containers. So every field is carried over, and a
field this runtime cannot honour (an unknown capability or rlimit, a seccomp profile
libseccomp cannot compile, a device of an unknown kind) fails the container's creation
with a message naming it: it never starts less confined than its spec says.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from a3s_box.k8s.oci_seccomp import SeccompProfileError, compile_profile

CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
RLIMITS = ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS",
           "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS", "RLIMIT_SIGPENDING",
           "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME")
_UINT32_MAX = 0xFFFFFFFE  # (uid_t)-1 means "unchanged" to the kernel
_RLIM_INFINITY = (1 << 64) - 1


class SecurityContextError(ValueError):
    """A part of the spec this runtime cannot honour (the message says which)."""


def _caps(names: Any, where: str) -> int:
    mask = 0
    for name in names or []:
        if name not in CAPABILITIES:
            raise SecurityContextError(f"{where}: unknown capability {name!r}")
        mask |= 1 << CAPABILITIES.index(name)
    return mask


def _id(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _UINT32_MAX:
        raise SecurityContextError(f"{where}: {value!r} is not a uid or gid")
    return value


def process_flags(process: dict[str, Any]) -> list[str]:
    """The process-level part (user, groups, umask, capabilities, no_new_privs, rlimits)
    of an OCI `process` object: for the container's own process and for each exec."""
    flags: list[str] = []
    user = process.get("user") or {}
    flags += ["-U", f"{_id(user.get('uid', 0), 'process.user.uid')}:{_id(user.get('gid', 0), 'process.user.gid')}"]
    for gid in user.get("additionalGids") or []:
        flags += ["-g", str(_id(gid, "process.user.additionalGids"))]
    if user.get("umask") is not None:
        umask = user["umask"]
        if not isinstance(umask, int) or not 0 <= umask <= 0o777:
            raise SecurityContextError(f"process.user.umask: {umask!r}")
        flags += ["-k", f"{umask:o}"]
    caps = process.get("capabilities")
    if caps is not None:
        sets = [_caps(caps.get(k), f"process.capabilities.{k}")
                for k in ("bounding", "effective", "permitted", "inheritable", "ambient")]
        flags += ["-C", ":".join(f"{m:x}" for m in sets)]
    # a spec without a capabilities object grants none (runc's reading, and the safe one)
    else:
        flags += ["-C", "0:0:0:0:0"]
    if process.get("noNewPrivileges"):
        flags.append("-n")
    for n, rl in enumerate(process.get("rlimits") or []):
        kind = rl.get("type") if isinstance(rl, dict) else None
        if kind not in RLIMITS:
            raise SecurityContextError(f"process.rlimits[{n}]: unknown type {kind!r}")
        soft, hard = rl.get("soft"), rl.get("hard")
        if not all(isinstance(v, int) and 0 <= v <= _RLIM_INFINITY for v in (soft, hard)):
            raise SecurityContextError(f"process.rlimits[{n}]: soft and hard must be integers")
        flags += ["-l", f"{RLIMITS.index(kind)}:{soft}:{hard}"]
    return flags


def mount_flags(spec: dict[str, Any]) -> list[str]:
    """The container-wide part: a read-only root, masked and read-only paths, sysctls and
    devices (for the container's creation only: its execs share its mounts)."""
    linux = spec.get("linux") or {}
    flags: list[str] = []
    if (spec.get("root") or {}).get("readonly"):
        flags.append("-R")
    for path in linux.get("maskedPaths") or []:
        flags += ["-M", _path(path, "linux.maskedPaths")]
    for path in linux.get("readonlyPaths") or []:
        flags += ["-O", _path(path, "linux.readonlyPaths")]
    for key, value in sorted((linux.get("sysctl") or {}).items()):
        if not isinstance(key, str) or not key or "/" in key or ".." in key or "=" in key:
            raise SecurityContextError(f"linux.sysctl: {key!r} is not a sysctl name")
        flags += ["-y", f"{key}={value}"]
    for n, dev in enumerate(linux.get("devices") or []):
        flags += ["-d", _device(dev, f"linux.devices[{n}]")]
    return flags


def _path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "/../" in value + "/" or "\0" in value:
        raise SecurityContextError(f"{where}: {value!r} is not an absolute path")
    return value


def _device(dev: Any, where: str) -> str:
    if not isinstance(dev, dict):
        raise SecurityContextError(f"{where}: must be an object")
    path = _path(dev.get("path"), where)
    kind = {"c": "c", "u": "c", "b": "b", "p": "p"}.get(str(dev.get("type")))
    if kind is None or not path.startswith("/dev/"):
        raise SecurityContextError(f"{where}: {dev.get('type')!r} device at {path!r}")
    numbers = [dev.get("major", 0), dev.get("minor", 0), dev.get("fileMode", 0o666)]
    if not all(isinstance(v, int) and v >= 0 for v in numbers) or ":" in path:
        raise SecurityContextError(f"{where}: major, minor and fileMode must be integers")
    major, minor, mode = numbers
    return (f"{path}:{kind}:{major}:{minor}:{mode & 0o7777:o}:{_id(dev.get('uid', 0), where)}:"
            f"{_id(dev.get('gid', 0), where)}")


@dataclass(frozen=True)
class SeccompFilter:
    """The compiled program, and where the guest finds it."""

    program: bytes
    guest_path: str


def seccomp_filter(spec: dict[str, Any], guest_path: str) -> SeccompFilter | None:
    profile = (spec.get("linux") or {}).get("seccomp")
    if not profile:
        return None
    try:
        return SeccompFilter(compile_profile(profile), guest_path)
    except SeccompProfileError as e:
        raise SecurityContextError(f"linux.seccomp: {e}") from e
