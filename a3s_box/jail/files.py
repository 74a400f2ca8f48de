"""Handing a host file to a confined VMM, or taking it back.

As root each VMM has a uid of its own (ids.py): a file is given by chown. Without root,
every VMM runs as an id of the user's subordinate range (a3s_box/subids.py), which the
user cannot chown to from outside its user namespace; to the user's files those ids are
"others". So a file given to a VMM gets, for others, what its owner (or group) bits
allow: the home is 0700, so no other host user reaches it, and a VMM reaches only what
its jail binds (its own files). Taken back (uid 0, gid 0): others keep what MODE gives.
"""
from __future__ import annotations

import os
from pathlib import Path


def give(path: Path | str, uid: int, gid: int, mode: int | None = None) -> None:
    """PATH becomes UID:GID's (0:0: the host's), with MODE if given."""
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
        if mode is not None:
            os.chmod(path, mode)
        return
    bits = os.stat(path).st_mode & 0o777 if mode is None else mode
    if uid != 0:
        bits |= (bits >> 6) & 0o7
    if gid != 0:
        bits |= (bits >> 3) & 0o7
    os.chmod(path, bits)
