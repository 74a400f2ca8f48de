"""The named volumes of a home: HOME/volumes/<project>.<name>/disk.ext4 (sparse: the
size is a cap, the file holds what was written) and volume.json beside it.

A disk is made whole in a temporary file and renamed into place, so a crash never
leaves a half-made volume that a box would mount; a full disk removes it and is a
DiskFullError naming the home.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from a3s_box.disks import space
from a3s_box.errors import BoxError
from a3s_box.home import Home

DISK = "disk.ext4"


class VolumeError(BoxError):
    """A named volume could not be made, found or removed (names the volume)."""


@dataclass(frozen=True)
class VolumeInfo:
    project: str
    name: str
    size: int  # the cap, bytes
    used: int  # bytes the sparse disk holds on the host
    path: str
    created: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class VolumeStore:
    def __init__(self, home: Home) -> None:
        self.root = home.root / "volumes"

    def folder(self, project: str, name: str) -> Path:
        return self.root / f"{project}.{name}"

    def disk(self, project: str, name: str) -> Path:
        return self.folder(project, name) / DISK

    def ensure(self, project: str, name: str, size: int) -> Path:
        """The volume's disk, made on first use. An existing volume keeps its data (and
        its size: growing one is not done behind the user's back)."""
        disk = self.disk(project, name)
        if disk.is_file():
            return disk
        self.root.mkdir(parents=True, exist_ok=True)
        # outside the clean-up: the free space it says is with the half-made disk gone
        with space.full_disk_is_error(f"volume {name}", self.root.parent):
            tmp = Path(tempfile.mkdtemp(prefix=f".{project}.{name}.", dir=self.root))
            try:
                with open(tmp / DISK, "wb") as f:
                    f.truncate(size)
                r = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", name[:16], "-E", "root_owner=0:0",
                                    "-O", "^has_journal" if size < (64 << 20) else "has_journal",
                                    str(tmp / DISK)], capture_output=True, text=True, timeout=120)
                if r.returncode != 0 and os.strerror(errno.ENOSPC) in r.stderr:  # as mkfs said it
                    raise OSError(errno.ENOSPC, "mkfs.ext4 could not write the volume's file system",
                                  str(tmp / DISK))
                if r.returncode != 0:
                    raise VolumeError(f"volume {name}: mkfs.ext4 failed: {r.stderr.strip()[-300:]}")
                (tmp / "volume.json").write_text(json.dumps(
                    {"project": project, "name": name, "size": size,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, sort_keys=True))
                os.replace(tmp, self.folder(project, name))
            except FileNotFoundError as e:
                raise VolumeError(f"volume {name}: mkfs.ext4 not found (install e2fsprogs)") from e
            except OSError as e:
                if space.is_full(e):
                    raise
                raise VolumeError(f"volume {name}: cannot create it in {self.root}: {e}") from e
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return disk

    def list(self, project: str | None = None) -> list[VolumeInfo]:
        out: list[VolumeInfo] = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            if d.name.startswith(".") or not (d / DISK).is_file():
                continue
            try:
                meta = json.loads((d / "volume.json").read_text())
            except (OSError, ValueError):
                continue
            if project is not None and meta.get("project") != project:
                continue
            st = (d / DISK).stat()
            out.append(VolumeInfo(str(meta["project"]), str(meta["name"]), int(meta["size"]),
                                  st.st_blocks * 512, str(d / DISK), str(meta.get("created", ""))))
        return out

    def find(self, name: str, project: str | None = None) -> VolumeInfo:
        """By NAME, or PROJECT.NAME; ambiguous names are an error."""
        if project is None and "." in name:
            project, name = name.split(".", 1)
        matches = [v for v in self.list(project) if v.name == name]
        if not matches:
            raise VolumeError(f"volume {name}: no such volume (see `box volume ls`)")
        if len(matches) > 1:
            raise VolumeError(f"volume {name}: in several projects "
                              f"({', '.join(v.project for v in matches)}); give PROJECT.{name}")
        return matches[0]

    def remove(self, project: str, name: str) -> None:
        folder = self.folder(project, name)
        # renamed first: a half-removed volume is never mounted
        trash = self.root / f".rm.{project}.{name}.{os.getpid()}"
        try:
            os.replace(folder, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)
