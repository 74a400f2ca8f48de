"""Seccomp BPF filters, built in Python for the host processes a3s-box starts: the
instructions, the arch check, installing a program, and a denylist of calls a network
proxy never makes (the egress helper's). jail/fsguard.py builds virtiofsd's filter on
the same pieces.

Threat: the process that installs one is about to handle what a hostile guest sends
(its traffic, its file requests); if it is taken over, these calls must still fail.
"""
from __future__ import annotations

import ctypes
import errno
import platform
import struct

PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
LD_W_ABS, JEQ_K, JGE_K, JSET_K, AND_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06
_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

# Calls a proxy never makes, that a taken-over one would use to widen its reach: mounts,
# namespaces, modules, kexec, bpf, perf, keyrings, ptrace and other processes' memory,
# device nodes, clocks, reboot, swap, raw I/O ports.
_DENY = {
    "x86_64": (165, 166, 155, 161, 167, 168, 169, 246, 320, 175, 313, 176, 321, 298, 250, 248, 249,
               272, 308, 101, 310, 311, 133, 259, 227, 164, 305, 159, 163, 172, 173, 103, 153,
               428, 429, 430, 431, 432, 433, 442),
    "aarch64": (40, 39, 41, 51, 224, 225, 142, 104, 294, 105, 273, 106, 280, 241, 219, 217, 218, 97,
                268, 117, 270, 271, 33, 112, 170, 266, 171, 89, 116, 58, 428, 429, 430, 431, 432, 433,
                442),
}
_CLONE = {"x86_64": 56, "aarch64": 220}
NR_CLONE3 = 435
CLONE_NS_FLAGS = 0x7E020080  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME


class SeccompError(OSError):
    pass


def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


def arch_token(machine: str | None = None) -> int:
    return _ARCH[machine or platform.machine()]


def denylist_program(machine: str | None = None) -> list[bytes]:
    """EPERM for the calls above, for clone with a namespace flag and for another ABI's
    calls; ENOSYS for clone3 (its flags sit behind a pointer; libc falls back to clone)."""
    m = machine or platform.machine()
    deny = _DENY[m]
    eperm, enosys, allow = (op(RET_K, RET_ERRNO | errno.EPERM), op(RET_K, RET_ERRNO | errno.ENOSYS),
                            op(RET_K, RET_ALLOW))
    allow_at = 5 + len(deny) + 4  # arch check (3), nr, x32; the JEQs; clone3, clone, flags, JSET
    deny_at, nosys_at = allow_at + 1, allow_at + 2
    out = [op(LD_W_ABS, 4), op(JEQ_K, arch_token(m), 1, 0), eperm, op(LD_W_ABS, 0)]

    def to(label: int) -> int:
        return label - len(out) - 1
    out.append(op(JGE_K, 0x40000000, to(deny_at), 0))
    for nr in deny:
        out.append(op(JEQ_K, nr, to(deny_at), 0))
    out.append(op(JEQ_K, NR_CLONE3, to(nosys_at), 0))
    out.append(op(JEQ_K, _CLONE[m], 0, to(allow_at)))
    out.append(op(LD_W_ABS, 16))  # clone's flags (low word)
    out.append(op(JSET_K, CLONE_NS_FLAGS, to(deny_at), 0))
    assert len(out) == allow_at
    return out + [allow, eperm, enosys]


def install_program(ops: list[bytes], what: str) -> None:
    """In the calling thread and what it execs or forks (root, or no_new_privs first)."""
    filters = (ctypes.c_ubyte * (8 * len(ops))).from_buffer_copy(b"".join(ops))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    prog = SockFprog(len(ops), ctypes.addressof(filters))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise SeccompError(ctypes.get_errno(), what)


def install_denylist() -> None:
    install_program(denylist_program(), "seccomp denylist")
