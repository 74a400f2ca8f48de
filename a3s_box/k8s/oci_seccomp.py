"""An OCI spec's seccomp profile (linux.seccomp) compiled to a BPF program, the way runc
does it: with libseccomp (the C library every container runtime uses, loaded with
ctypes; libseccomp2 comes with QEMU and systemd). The program is loaded in the guest by
/.a3s/container right before the container's exec (guest/init/secctx.c).

Threat: the profile is the cluster's (a Pod's seccompProfile, containerd's
RuntimeDefault); what runs under it is hostile. A profile this host cannot compile
exactly (an unknown action or operator, an architecture libseccomp lacks) is refused,
never loosened: the container does not start. Syscalls this architecture does not have
are skipped, as runc skips them (they cannot be called).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from typing import Any

_ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_KILL_THREAD": 0x00000000, "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000, "SCMP_ACT_ALLOW": 0x7FFF0000, "SCMP_ACT_LOG": 0x7FFC0000,
}
_WITH_ERRNO = {"SCMP_ACT_ERRNO": 0x00050000, "SCMP_ACT_TRACE": 0x7FF00000}
_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
        "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
_NR_ERROR = -1  # __NR_SCMP_ERROR: a name libseccomp does not know here


class SeccompProfileError(ValueError):
    """The profile cannot be compiled as written (the message says which part)."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise SeccompProfileError(f"libseccomp is not installed on this host ({e}): install libseccomp2") from e
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _action(name: Any, errno_ret: Any, where: str) -> int:
    if name in _ACTIONS:
        return _ACTIONS[str(name)]
    if name in _WITH_ERRNO:
        code = errno.EPERM if errno_ret is None else errno_ret
        if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 0xFFFF:
            raise SeccompProfileError(f"{where}: errnoRet {code!r}")
        return _WITH_ERRNO[str(name)] | code
    raise SeccompProfileError(f"{where}: action {name!r} is not one this runtime knows")


def _arg(raw: Any, where: str) -> _ArgCmp:
    if not isinstance(raw, dict):
        raise SeccompProfileError(f"{where}: an argument rule must be an object")
    index, op = raw.get("index"), raw.get("op")
    value, two = raw.get("value", 0), raw.get("valueTwo", 0)
    if (not isinstance(index, int) or not 0 <= index <= 5 or op not in _OPS
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 64 for v in (value, two))):
        raise SeccompProfileError(f"{where}: argument rule {raw!r}")
    return _ArgCmp(index, _OPS[str(op)], value, two)


def compile_profile(profile: dict[str, Any]) -> bytes:
    """The BPF program (struct sock_filter[], native byte order) PROFILE says."""
    lib = _library()
    default = _action(profile.get("defaultAction"), profile.get("defaultErrnoRet"), "defaultAction")
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise SeccompProfileError("libseccomp could not start a filter")
    try:
        lib.seccomp_attr_set(ctx, 3, 0)  # SCMP_FLTATR_CTL_NNP off: only exported, loaded by the guest
        for arch in profile.get("architectures") or []:
            token = lib.seccomp_arch_resolve_name(str(arch).removeprefix("SCMP_ARCH_").lower().encode())
            if token == 0:
                raise SeccompProfileError(f"architectures: {arch!r} is not one libseccomp knows")
            rc = lib.seccomp_arch_add(ctx, token)
            if rc not in (0, -errno.EEXIST):
                raise SeccompProfileError(f"architectures: {arch}: {os.strerror(-rc)}")
        for n, rule in enumerate(profile.get("syscalls") or []):
            where = f"syscalls[{n}]"
            if not isinstance(rule, dict):
                raise SeccompProfileError(f"{where}: must be an object")
            action = _action(rule.get("action"), rule.get("errnoRet"), where)
            args = [_arg(a, where) for a in rule.get("args") or []]
            if action == default:
                continue  # libseccomp refuses a rule that repeats the default: it changes nothing
            # runc's reading: conditions on distinct arguments are one rule (all must
            # hold); several on one argument are a rule each (any may hold)
            groups = [args] if len({a.arg for a in args}) == len(args) else [[a] for a in args]
            for name in rule.get("names") or []:
                nr = lib.seccomp_syscall_resolve_name(str(name).encode())
                if nr == _NR_ERROR:
                    continue  # not a syscall of this architecture
                for group in groups:
                    array = (_ArgCmp * max(len(group), 1))(*group)
                    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(group), array)
                    if rc not in (0, -errno.EEXIST):
                        raise SeccompProfileError(f"{where}: {name}: {os.strerror(-rc)}")
        out = os.memfd_create("a3s-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, out)
            if rc != 0:
                raise SeccompProfileError(f"libseccomp could not export the filter: {os.strerror(-rc)}")
            os.lseek(out, 0, os.SEEK_SET)
            chunks = []
            while data := os.read(out, 1 << 16):
                chunks.append(data)
            return b"".join(chunks)
        finally:
            os.close(out)
    finally:
        lib.seccomp_release(ctx)
