"""OCI security contexts as /.a3s/container flags (k8s/security.py) and seccomp profiles
compiled with libseccomp (k8s/oci_seccomp.py): what is carried, what is refused."""
from __future__ import annotations

import struct
from typing import Any

import pytest

from a3s_box.k8s.oci_seccomp import SeccompProfileError, compile_profile
from a3s_box.k8s.security import SecurityContextError, mount_flags, process_flags, seccomp_filter

# what containerd's CRI writes for a container with runAsUser: 1000, drop: [ALL] + add: [NET_BIND_SERVICE],
# allowPrivilegeEscalation: false, readOnlyRootFilesystem (trimmed)
SPEC: dict[str, Any] = {
    "process": {"user": {"uid": 1000, "gid": 3000, "additionalGids": [3000, 2000]},
                "capabilities": {"bounding": ["CAP_NET_BIND_SERVICE"], "effective": ["CAP_NET_BIND_SERVICE"],
                                 "permitted": ["CAP_NET_BIND_SERVICE"]},
                "noNewPrivileges": True,
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1024}]},
    "root": {"path": "rootfs", "readonly": True},
    "linux": {"maskedPaths": ["/proc/acpi", "/proc/kcore"], "readonlyPaths": ["/proc/bus", "/proc/sys"],
              "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0"},
              "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438}]},
}


def test_a_containerd_spec_becomes_these_flags() -> None:
    assert process_flags(SPEC["process"]) == [
        "-U", "1000:3000", "-g", "3000", "-g", "2000", "-C", "400:400:400:0:0", "-n", "-l", "7:1024:1048576"]
    assert mount_flags(SPEC) == [
        "-R", "-M", "/proc/acpi", "-M", "/proc/kcore", "-O", "/proc/bus", "-O", "/proc/sys",
        "-y", "net.ipv4.ip_unprivileged_port_start=0", "-d", "/dev/fuse:c:10:229:666:0:0"]


def test_absent_parts_are_root_with_no_capability_and_nothing_else() -> None:
    assert process_flags({}) == ["-U", "0:0", "-C", "0:0:0:0:0"]
    assert mount_flags({}) == []
    assert seccomp_filter({}, "/run/x.bpf") is None


@pytest.mark.parametrize("process, said", [
    ({"capabilities": {"bounding": ["CAP_EVERYTHING"]}}, "process.capabilities.bounding: unknown capability"),
    ({"user": {"uid": -1}}, "process.user.uid: -1 is not a uid or gid"),
    ({"user": {"uid": 1 << 32}}, "process.user.uid"),
    ({"user": {"umask": 0o1777}}, "process.user.umask"),
    ({"rlimits": [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]}, r"process.rlimits\[0\]: unknown type"),
    ({"rlimits": [{"type": "RLIMIT_NOFILE", "soft": "1", "hard": 1}]}, r"process.rlimits\[0\]: soft and hard"),
])
def test_a_process_part_it_cannot_honour_is_refused(process: dict[str, object], said: str) -> None:
    with pytest.raises(SecurityContextError, match=said):
        process_flags(process)


@pytest.mark.parametrize("linux, said", [
    ({"maskedPaths": ["proc/kcore"]}, "linux.maskedPaths: 'proc/kcore' is not an absolute path"),
    ({"readonlyPaths": ["/proc/../etc"]}, "linux.readonlyPaths"),
    ({"sysctl": {"kernel/x": "1"}}, "linux.sysctl: 'kernel/x' is not a sysctl name"),
    ({"devices": [{"path": "/etc/x", "type": "c"}]}, r"linux.devices\[0\]"),
    ({"devices": [{"path": "/dev/x", "type": "z"}]}, r"linux.devices\[0\]: 'z' device"),
])
def test_a_mount_part_it_cannot_honour_is_refused(linux: dict[str, object], said: str) -> None:
    with pytest.raises(SecurityContextError, match=said):
        mount_flags({"linux": linux})


def _program(profile: dict[str, object]) -> list[tuple[int, int, int, int]]:
    data = compile_profile(profile)
    assert data and len(data) % 8 == 0
    return [struct.unpack("=HBBI", data[i:i + 8]) for i in range(0, len(data), 8)]


def test_a_profile_compiles_to_a_program_with_its_actions() -> None:
    allow, errno_eperm = 0x7FFF0000, 0x00050001
    prog = _program({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                     "syscalls": [{"names": ["read", "write", "not_a_syscall_anywhere"], "action": "SCMP_ACT_ALLOW"},
                                  {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                                   "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]})
    returns = {k for code, _, _, k in prog if code == 0x06}  # BPF_RET|BPF_K
    assert allow in returns and errno_eperm in returns


@pytest.mark.parametrize("profile, said", [
    ({"defaultAction": "SCMP_ACT_MAYBE"}, "defaultAction: action 'SCMP_ACT_MAYBE'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_PDP11"]}, "architectures: 'SCMP_ARCH_PDP11'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]},
     r"syscalls\[0\]: argument rule"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]},
     r"syscalls\[0\]: argument rule"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}, "defaultAction: errnoRet -1"),
])
def test_a_profile_it_cannot_compile_exactly_is_refused(profile: dict[str, object], said: str) -> None:
    with pytest.raises(SeccompProfileError, match=said):
        compile_profile(profile)
    with pytest.raises(SecurityContextError, match="linux.seccomp: "):
        seccomp_filter({"linux": {"seccomp": profile}}, "/run/x.bpf")
