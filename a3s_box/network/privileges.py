"""Dropping root for good, in a network process that has set up what needs root.

Shared by the per-box helper (helper.py, to the box's uid) and the host-wide egress
daemon (daemon.py, to a uid of its own). Threat: the process is about to parse what
hostile guests send; taken over, it must hold no capability, gain none through exec
(no_new_privs) and be refused mounts, namespaces, ptrace and the like (seccomp.py).
"""
from __future__ import annotations

import ctypes
import errno
import os

from a3s_box import seccomp

PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38


def drop_privileges(uid: int, gid: int) -> None:
    """From here on the process is UID:GID with no capability: what it needed root for
    (a namespace, listening sockets, the CA key) is already open, and a socket in a
    box's namespace needs no privilege."""
    # What Python loads on first use must be loaded now: the interpreter's own files may
    # not be readable by UID (a Python under /root, say). IDNA: every dial.
    "bücher.example".encode("idna").decode("idna")
    libc = ctypes.CDLL(None, use_errno=True)
    if os.geteuid() != 0 and (uid, gid) == (os.geteuid(), os.getegid()):
        pass  # a user without root: no capability to drop, no other uid to become
    else:
        _become(libc, uid, gid)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "no_new_privs")
    seccomp.install_denylist()  # no mounts, namespaces, modules, ptrace... (a3s_box/seccomp.py)


def _become(libc: ctypes.CDLL, uid: int, gid: int) -> None:
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            raise OSError(ctypes.get_errno(), "dropping capabilities")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # clears the permitted and effective sets
