"""Shrink what the VM process can do on the host, as far as the host allows.

libkrun's advice is to treat the guest and its VMM as one unit: a guest that escapes
into the VMM has the VMM's rights. So before loading libkrun the VM process takes new
UTS and IPC namespaces (nothing of libkrun needs the host's), an empty network
namespace (a box's network is `none` under libkrun: whatever libkrun's TSI would open
for the guest finds no network, and a guest listen() is never exposed on the host),
and sets no_new_privs (no setuid gains from here on). It keeps the host's mount
namespace (virtio-fs needs the root folder). Each UTS/IPC/no_new_privs step that the
host refuses (not root, a seccomp'd container) is skipped and named in the returned
list; the network namespace is not optional: without it the VM must not start.
"""
from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000


class NoEmptyNetwork(RuntimeError):
    """The host refused an empty network namespace: the VM would get the host's network."""
PR_SET_NO_NEW_PRIVS = 38


def isolate() -> list[str]:
    """Apply what the host allows; one line per step, 'skipped' ones say why."""
    if not sys.platform.startswith("linux"):
        return ["namespaces: not on this OS"]
    libc = ctypes.CDLL(None, use_errno=True)
    done = []
    for name, flag in (("uts", CLONE_NEWUTS), ("ipc", CLONE_NEWIPC)):
        if libc.unshare(flag) == 0:
            done.append(f"{name} namespace: new")
        else:
            done.append(f"{name} namespace: skipped ({os.strerror(ctypes.get_errno())})")
    if libc.unshare(CLONE_NEWNET) != 0:
        raise NoEmptyNetwork(f"cannot take an empty network namespace "
                             f"({os.strerror(ctypes.get_errno())}): the guest would get the host's network")
    done.append("net namespace: new, empty")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        done.append("no_new_privs: set")
    else:
        done.append(f"no_new_privs: skipped ({os.strerror(ctypes.get_errno())})")
    return done
