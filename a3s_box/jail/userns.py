"""A user namespace for a host helper that serves a guest's file requests (virtiofsd):
root inside it is the bind folder's owner outside, so what the guest creates is the
folder owner's on the host, and the helper's capabilities reach only the inodes its
map covers (the kernel refuses device nodes made from such a namespace outright).

    ns uid 0        -> the folder's owner (its gid for gids)
    ns uid 1..65535 -> SUBORDINATE + 1 .. (a range no user of the host has), or
                       themselves when the owner is root; unmapped when a3s-box runs
                       without root (the owner is then that user, mapping only itself)

The child unshares in its preexec step, tells the parent its pid over a pipe, and waits
until the parent (root outside) has written its maps; then it becomes root inside and
execs. A failure at any step ends the child before exec (status 126): never half mapped.
"""
from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable

CLONE_NEWUSER = 0x10000000
SUBORDINATE = 1_700_000_000  # beside the jail's uids (1,610,000,000 + up to 1,000,000)
COUNT = 65536


def id_map(owner: int, rootless: bool = False) -> str:
    if rootless:  # a user without root may map its own id, nothing else
        return f"0 {owner} 1\n"
    if owner == 0:
        return f"0 0 {COUNT}\n"
    return f"0 {owner} 1\n1 {SUBORDINATE + 1} {COUNT - 1}\n"


class MappedSpawn:
    """Use `preexec` as (the end of) a Popen preexec_fn, with `pass_fds`; call `start()`
    before Popen and `finish()` after it."""

    def __init__(self, owner_uid: int, owner_gid: int) -> None:
        # without root, the owner is the caller (the shim checks) and maps only itself
        self.rootless = os.geteuid() != 0
        self.uid_map, self.gid_map = id_map(owner_uid, self.rootless), id_map(owner_gid, self.rootless)
        self._ready_r, self._ready_w = os.pipe()
        self._go_r, self._go_w = os.pipe()
        self.pass_fds = (self._ready_w, self._go_r)
        self.error: str | None = None
        self._thread = threading.Thread(target=self._map, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _map(self) -> None:
        ok = b"0"
        try:
            raw = os.read(self._ready_r, 32)
            if raw:
                pid = int(raw)
                steps = [("uid_map", self.uid_map), ("gid_map", self.gid_map)]
                if self.rootless:  # an unprivileged gid_map needs setgroups denied first
                    steps.insert(0, ("setgroups", "deny"))
                for name, text in steps:
                    with open(f"/proc/{pid}/{name}", "w") as f:
                        f.write(text)
                ok = b"1"
        except (OSError, ValueError) as e:
            self.error = f"user namespace map: {e}"
        finally:
            try:
                os.write(self._go_w, ok)
            except OSError:
                pass

    def preexec(self, then: Callable[[], None] = lambda: None) -> None:
        """In the child: unshare, wait for the maps, become root inside, then THEN."""
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWUSER) != 0:
            os._exit(126)
        os.write(self._ready_w, str(os.getpid()).encode())
        if os.read(self._go_r, 1) != b"1":
            os._exit(126)
        os.close(self._ready_w)
        os.close(self._go_r)  # not for the program
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        then()

    def finish(self) -> None:
        """After Popen returned (or failed): the thread is done, the pipes closed."""
        try:
            os.close(self._ready_w)  # a child that died before writing: the thread's read ends
        except OSError:
            pass
        self._thread.join(timeout=10)
        for fd in (self._ready_r, self._go_r, self._go_w):
            try:
                os.close(fd)
            except OSError:
                pass
