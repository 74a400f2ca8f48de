"""A user's subordinate ids (/etc/subuid, /etc/subgid) and the user namespace that maps
them, for a3s-box without root: the VMM of each box runs as an id of that range, which
is no one else's on the host (not the user's either), as root's jail gives each VMM a
uid of its own.

    ns id 0           -> the user (uid and primary gid)
    ns id 1 .. COUNT  -> the user's subordinate range, START .. START + COUNT - 1

Only newuidmap/newgidmap (setuid root, Debian's `uidmap` package) may write such a map
for a user: they check the range against /etc/subuid and /etc/subgid. `map_ids(pid)`
runs them for a process that has just unshared its user namespace.

Threat: the ids are the user's own to hand out (the files say so); a box's VMM, at one
of them, reaches none of the user's files but those its jail binds and hands over
(mode bits for "others": the user's home is 0700, so no other host user gets past it).
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SUBUID, SUBGID = Path("/etc/subuid"), Path("/etc/subgid")
MAX_COUNT = 65536  # what one box's id is chosen from


class SubIdError(RuntimeError):
    """The user's subordinate ids cannot be had or mapped (says which and why)."""


@dataclass(frozen=True)
class SubordinateIds:
    uid: int
    gid: int
    uid_start: int
    gid_start: int
    count: int  # of both ranges (the smaller), at most MAX_COUNT

    def host_uid(self, ns_id: int) -> int:
        return self.uid if ns_id == 0 else self.uid_start + ns_id - 1


def _range(path: Path, names: tuple[str, ...]) -> tuple[int, int] | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in names and parts[1].isdigit() and parts[2].isdigit():
            if int(parts[2]) > 0:
                return int(parts[1]), int(parts[2])
    return None


def subordinate_ids(uid: int | None = None) -> SubordinateIds | None:
    """The calling user's ranges (None: no range in both files, or no tool to map them)."""
    uid = os.geteuid() if uid is None else uid
    if uid == 0 or not (shutil.which("newuidmap") and shutil.which("newgidmap")):
        return None
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    names = (name, str(uid))
    u, g = _range(SUBUID, names), _range(SUBGID, names)
    if u is None or g is None:
        return None
    return SubordinateIds(uid, os.getegid(), u[0], g[0], min(u[1], g[1], MAX_COUNT))


def why_not() -> str:
    """Why subordinate_ids() is None for the calling user ("" when it is not)."""
    if not (shutil.which("newuidmap") and shutil.which("newgidmap")):
        return "newuidmap/newgidmap not found (install the uidmap package)"
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = str(os.geteuid())
    if subordinate_ids() is None:
        return f"no subordinate id range for {name} in {SUBUID} and {SUBGID} (usermod --add-subuids/--add-subgids)"
    return ""


def map_ids(pid: int, ids: SubordinateIds) -> None:
    """Writes PID's uid and gid maps (PID has just unshared its user namespace)."""
    for tool, own, start in (("newuidmap", ids.uid, ids.uid_start), ("newgidmap", ids.gid, ids.gid_start)):
        r = subprocess.run([tool, str(pid), "0", str(own), "1", "1", str(start), str(ids.count)],
                           capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            raise SubIdError(f"{tool}: {r.stderr.strip() or f'exit {r.returncode}'}")
