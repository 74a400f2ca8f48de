"""The box's own root folder for virtio-fs: a full copy of the image's unpacked root.

Measured here (ext4, no reflink): an Alpine-sized root (36 MB, 909 files) copies in
0.08 s with `cp -a`, 0.14 s with shutil.copytree. That is paid once, on the box's first
start (restarts keep the copy and whatever the box wrote), so a copy beats the moving
parts of an overlay (which needs a privileged mount or FUSE). `--reflink=auto` makes it
near-free on btrfs/xfs; macOS `cp -c` clones on APFS.

Atomic: the copy is made beside the target and renamed into place, so an interrupted
start never leaves a half-copied root that a later start would take as complete.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from a3s_box.drivers.krun.spec import GUEST_INIT_PATH, KRUN_CONFIG, KrunSpec, krun_config
from a3s_box.errors import DriverError

CP = ("cp", "-a", "-c") if sys.platform == "darwin" else ("cp", "-a", "--reflink=auto")


def copy_root(box: str, image_root: Path, box_root: Path) -> bool:
    """Copy `image_root` to `box_root` unless it exists already; True if it copied."""
    if box_root.is_dir():
        return False
    if not image_root.is_dir():
        raise DriverError(box, f"root folder {image_root} is gone (pull the image again)")
    box_root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".root-", dir=box_root.parent))
    try:
        proc = subprocess.run([*CP, f"{image_root}/.", str(tmp)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise DriverError(box, f"cannot copy root folder {image_root}: "
                              f"{proc.stderr.strip() or 'cp failed'}")
        tmp.chmod(image_root.stat().st_mode & 0o7777)
        os.rename(tmp, box_root)
    except OSError as e:
        raise DriverError(box, f"cannot copy root folder {image_root}: {e}") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return True


def install_guest_files(box: str, root: Path, init_binary: Path, spec: KrunSpec) -> None:
    """Our guest init at /init and libkrun's /.krun_config.json, each written atomically."""
    try:
        target = root / GUEST_INIT_PATH.lstrip("/")
        tmp = target.with_name(f".{target.name}.a3s-tmp")
        shutil.copyfile(init_binary, tmp)
        tmp.chmod(0o755)
        os.replace(tmp, target)
        cfg = root / KRUN_CONFIG
        tmp = cfg.with_name(f"{cfg.name}.a3s-tmp")
        tmp.write_text(json.dumps(krun_config(spec), indent=1))
        os.replace(tmp, cfg)
    except OSError as e:
        raise DriverError(box, f"cannot install the guest init into {root}: {e}") from e
