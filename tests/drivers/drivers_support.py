"""Helpers for the driver tests (a module with a unique name: tests/ has no packages)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def overlay(base: Path, dest: Path) -> Path:
    """A copy-on-write qcow2 over the base image, as the image store makes per box."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base),
                    str(dest)], check=True, capture_output=True)
    return dest


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (to prove nothing was left running)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            state = (d / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if text.encode() in cmd and state != "Z":
            pids.append(int(d.name))
    return pids
