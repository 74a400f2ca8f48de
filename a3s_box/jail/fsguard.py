"""A seccomp filter for the host processes that write files on a guest's behalf
(virtiofsd serving a bind volume): no device nodes, no setuid or setgid bits.

Threat: root in the guest drives virtiofsd, which runs as root on the host, through
FUSE requests: `mknod blk b 8 0` in a writable bind would be a block device of the
host's disk in the user's own folder, and `chmod 4755` a setuid-root program there.
virtiofsd's own option drops CAP_MKNOD (modcaps), it runs with no xattrs at all (so no
`security.capability` or `trusted.*`) in a user namespace (jail/userns.py); this filter
is the layer that holds whatever path virtiofsd takes to the kernel: every system call that
sets a mode (open/openat/creat with O_CREAT or O_TMPFILE, mkdir, mknod, chmod and
their *at forms) fails with EPERM when the mode has S_ISUID or S_ISGID, and mknod of
a character or block device always does. openat2 (whose mode sits behind a pointer
the filter cannot read) fails with ENOSYS, so libc falls back to openat.

    install()  in the child between fork and exec, as root (needs no no_new_privs)
"""
from __future__ import annotations

import errno
import platform

from a3s_box.seccomp import (AND_K, JEQ_K, JSET_K, LD_W_ABS, RET_ALLOW, RET_ERRNO, RET_K, arch_token,
                             install_program, op)

S_ISUID_ISGID, S_IFMT, S_IFCHR, S_IFBLK = 0o6000, 0o170000, 0o020000, 0o060000
O_CREAT, O_TMPFILE_BIT = 0o100, 0o20000000

# (arch token, {syscall: (mode arg, flags arg or None, is mknod)})
_X86_64 = (arch_token("x86_64"), {
    2: (2, 1, False), 85: (1, None, False), 90: (1, None, False), 91: (1, None, False), 83: (1, None, False),
    133: (1, None, True), 257: (3, 2, False), 258: (2, None, False), 259: (2, None, True),
    268: (2, None, False), 452: (2, None, False)})
_AARCH64 = (arch_token("aarch64"), {
    56: (3, 2, False), 34: (2, None, False), 33: (2, None, True), 52: (1, None, False),
    53: (2, None, False), 452: (2, None, False)})
NR_OPENAT2 = 437


def program(machine: str | None = None) -> list[bytes]:
    """The BPF program for MACHINE (default: this one)."""
    arch, calls = {"x86_64": _X86_64, "aarch64": _AARCH64}[machine or platform.machine()]
    deny = op(RET_K, RET_ERRNO | errno.EPERM)
    allow = op(RET_K, RET_ALLOW)
    checks: list[list[bytes]] = []
    for nr, (mode_arg, flags_arg, is_mknod) in sorted(calls.items()):
        block: list[bytes] = []
        if flags_arg is not None:  # only a creating open carries a mode
            block += [op(LD_W_ABS, 16 + 8 * flags_arg), op(JSET_K, O_CREAT | O_TMPFILE_BIT, 1, 0), allow]
        block += [op(LD_W_ABS, 16 + 8 * mode_arg), op(JSET_K, S_ISUID_ISGID, 0, 1), deny]
        if is_mknod:
            block += [op(AND_K, S_IFMT), op(JEQ_K, S_IFCHR, 1, 0), op(JEQ_K, S_IFBLK, 0, 1), deny]
        block.append(allow)
        checks.append(block)
    # dispatch: one JEQ per call, jumping over the rest of the dispatch (the JEQs after
    # it, openat2's JEQ and ENOSYS, "allow") and the blocks before its own
    out = [op(LD_W_ABS, 4), op(JEQ_K, arch, 1, 0), op(RET_K, RET_ERRNO | errno.EPERM),
           op(LD_W_ABS, 0)]
    offset = 0
    for i, nr in enumerate(sorted(calls)):
        after = len(calls) - 1 - i + 3
        out.append(op(JEQ_K, nr, after + offset, 0))
        offset += len(checks[i])
    out.append(op(JEQ_K, NR_OPENAT2, 0, 1))
    out.append(op(RET_K, RET_ERRNO | errno.ENOSYS))
    out.append(allow)
    for block in checks:
        out += block
    return out


def install() -> None:
    install_program(program(), "seccomp filter for a file server")
