"""Snapshot templates for QEMU boxes: boot once per snapshot key, start every further
box of that key as a clone of it (Kata's VM templating, on QEMU 7.2).

    template   a VM booted with its RAM in a file it shares (memory-backend-file,
               share=on), stopped once the guest init has mounted the root and answered
               HELLO (before any agent exists); only its device state is migrated out
               (x-ignore-shared: ~60 KiB), then it quits and never runs again. Its disk
               overlay is frozen: the backing file of every clone's overlay.
    clone      the same argv with the RAM file mapped copy-on-write (share=off) and
               `-incoming defer`; QMP loads the device state, `cont`, and the driver goes
               on as after a cold boot (SEED reseeds the CRNG and sets the clock, then
               MOUNT and CONFIG).

HOME.cache/snapshots/<key>/ holds ram, state, disk.qcow2 and meta.json; it is built in
a temporary folder and renamed into place, so a crash never leaves a half-made
template that a box would use; one that cannot fit the free space (its RAM file may
be written whole: a guest writing to a shared mapping on a full disk would die of
SIGBUS) is refused before its VM boots, and a build that fails is removed. Either way
the box boots cold. HOME.cache/snapshots/fork-<id>/ holds the frozen disk
layer a `box fork` left under both boxes. Which boxes use a template or layer is read
from the backing chains of their disks (a restarted clone still sits on its
template's disk), never from how they last booted. The key covers everything a restore depends on: the
QEMU binary and version, kernel and initramfs, accelerator and TSC rate, vCPUs,
memory and the device set (QEMU silently accepts `-smp 2` over a 1-vCPU snapshot, so
the argv is part of it), and the image. A template that fails to restore is removed,
and the box boots cold.

A box with bind volumes (virtio-fs, which QEMU 7.2 cannot migrate) has a template
without them, booted with a PCIe root port for each (template_spec); its clones map
no template page: each gets a copy of the template's RAM in a memfd of its own
(clone_ram.py: virtiofsd must see what the guest writes), loads the device state, and
has its shares hot-plugged into the ports before it runs (clone_spec); the guest waits
for their tags when it mounts them.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from a3s_box.atomic import write_text_atomic
from a3s_box.disks import space
from a3s_box.disks.overlay import OverlayError, create_overlay
from a3s_box.disks.qcow2 import backing_chain
from a3s_box.drivers.qemu.argv import RAM_FD, QemuSpec, qemu_argv
from a3s_box.errors import DriverError

KEY_VERSION = "a3s-snapshot-1"


class SnapshotError(DriverError):
    """A template could not be made or restored (the box then boots cold)."""


def template_bytes(memory_mib: int, disk: Path) -> int:
    """What a template may take: its RAM file (sparse, but the guest may touch all of
    it), a copy of the box's fresh overlay, and a margin for its device state and logs."""
    try:
        overlay = disk.stat().st_size
    except OSError:
        overlay = 0
    return (memory_mib << 20) + overlay + (4 << 20)


def _file_id(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


_HASHES: dict[str, str] = {}


def _file_hash(path: Path) -> str:
    """sha256 of a file, computed once per process for each (path, size, mtime)."""
    ident = _file_id(path)
    if ident not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _HASHES[ident] = h.hexdigest()
    return _HASHES[ident]


def binary_hash(binary: str) -> str:
    return _file_hash(Path(shutil.which(binary) or binary).resolve())


def normalized_argv(spec: QemuSpec) -> list[str]:
    """The argv with every per-box path replaced: what must match between a template and
    its clones (memory, vCPUs, machine, devices, kernel command line)."""
    anon = replace(spec, console_log=Path("CONSOLE"),
                   console_socket=Path("CONSOLE.SOCK") if spec.console_socket else None,
                   channel=Path("CHANNEL") if spec.channel else None,
                   qmp=Path("QMP") if spec.qmp else None, disk=Path("DISK") if spec.disk else None,
                   memory_file=Path("RAM"), memory_shared=False, incoming=None,
                   volume_disks=tuple(Path(f"VOLUME{i}") for i in range(len(spec.volume_disks))))
    return qemu_argv(anon)


def template_spec(spec: QemuSpec) -> QemuSpec:
    """The spec SPEC's template is booted from: its shares left out (vhost-user-fs is not
    migratable in QEMU 7.2) and a pod's NIC (its tap, MAC and address are the pod's), a
    PCIe root port in their place for each clone's."""
    if not spec.shares and spec.tap is None:
        return spec
    return replace(spec, shares=(), tap=None, tap_mac="", guest_net="",
                   hotplug_ports=len(spec.shares) + (spec.tap is not None))


def clone_spec(spec: QemuSpec, template: "Template") -> QemuSpec:
    """The spec a clone of TEMPLATE runs: SPEC's template spec waiting for the state;
    with shares, their sockets to be hot-plugged and its own RAM (RAM_FD, see
    clone_ram.py), else the template's RAM mapped copy-on-write."""
    base = replace(template_spec(spec), incoming="defer")
    if not base.hotplug_ports:
        return replace(base, memory_file=template.ram, memory_shared=False)
    plugged = replace(base, shares=spec.shares, tap=spec.tap, tap_mac=spec.tap_mac, guest_net=spec.guest_net,
                      hotplugged=True)
    # shares need guest RAM that virtiofsd sees: a copy of the template's of its own
    return replace(plugged, memory_fd=RAM_FD) if spec.shares else \
        replace(plugged, memory_file=template.ram, memory_shared=False)


def snapshot_key(spec: QemuSpec, image: str, qemu_version: str, cpu_model: str = "",
                 disk_size: int = 0, targets: tuple[str, ...] = ()) -> str:
    parts = {
        "v": KEY_VERSION, "argv": normalized_argv(spec), "qemu": qemu_version,
        "qemu_binary": binary_hash(spec.binary), "kernel": _file_hash(spec.kernel),
        "initramfs": spec.initramfs.name,  # named by the hash of init + modules
        "accel": spec.accel, "tsc_khz": spec.tsc_khz, "cpu": cpu_model, "image": image,
        **({"disk": disk_size} if disk_size else {}),  # the template's root was grown to it
        # a named volume's size: the guest learnt its capacity when the template booted
        **({"volumes": [_size(d) for d in spec.volume_disks]} if spec.volume_disks else {}),
        # the folders its disk has for volumes to be mounted on (PREPARE made them)
        **({"targets": sorted(targets)} if targets else {}),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def host_cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def create_overlay_on(backing: Path, dest: Path) -> None:
    """A new qcow2 at DEST whose backing file is BACKING (a template's frozen disk)."""
    try:
        create_overlay(backing, dest, "qcow2")
    except OverlayError as e:
        raise SnapshotError(dest.parent.name, str(e)) from e


@dataclass(frozen=True)
class Template:
    key: str
    folder: Path

    @property
    def ram(self) -> Path:
        return self.folder / "ram"

    @property
    def state(self) -> Path:
        return self.folder / "state"

    @property
    def disk(self) -> Path:
        return self.folder / "disk.qcow2"

    def new_overlay(self, dest: Path) -> None:
        """A new qcow2 at DEST backed by this template's disk: a copy of one made once per
        template (every new overlay of one backing file is the same bytes; qemu-img cost
        9 ms of each clone's start)."""
        first = self.folder / "overlay.qcow2"
        if not first.is_file():  # starts in parallel may each make one: the last one stays
            create_overlay_on(self.disk, first)
        shutil.copyfile(first, dest)

    def meta(self) -> dict[str, Any]:
        try:
            data = json.loads((self.folder / "meta.json").read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}


class TemplateStore:
    def __init__(self, cache: Path) -> None:
        self.root = cache / "snapshots"

    def get(self, key: str) -> Template | None:
        """The usable template of KEY: its folder `<key>.<build>` holds all four files."""
        for folder in sorted(self.root.glob(f"{key}.*"), reverse=True):
            t = Template(key, folder)
            if all(p.is_file() for p in (t.ram, t.state, t.disk, folder / "meta.json")):
                return t
        return None

    def staging(self, key: str, needs: int = 0) -> Path:
        """An empty folder to build KEY's template in, once NEEDS bytes are known to fit
        (DiskFullError otherwise: the caller boots the box cold)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._reap()
        d = self.root / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(d, ignore_errors=True)
        space.require(f"snapshot template {key[:12]}", self.root, needs)
        d.mkdir()
        return d

    def commit(self, key: str, staging: Path, meta: dict[str, Any]) -> Template:
        (staging / "meta.json").write_text(json.dumps({**meta, "key": key,
                                                        "created": time.time()}, sort_keys=True))
        # a new folder per build: the disk of an earlier, retired build may still be
        # under boxes' overlays
        final = self.root / f"{key}.{time.strftime('%Y%m%d%H%M%S')}{os.urandom(2).hex()}"
        os.replace(staging, final)
        return Template(key, final)

    def retire(self, key: str) -> None:
        """Never start a box from KEY's template again (it failed to restore). Its disk
        stays while boxes' overlays sit on it; `box snapshot prune` removes it after."""
        t = self.get(key)
        if t is not None:
            t.state.unlink(missing_ok=True)
            t.ram.unlink(missing_ok=True)  # running clones keep their mapping

    def remove(self, name: str) -> None:
        """Remove the folder NAME (a template build or a fork layer) at once."""
        folder = self.root / name
        trash = self.root / f".rm-{name}-{os.getpid()}"
        try:
            os.replace(folder, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def new_layer(self, source: str) -> Path:
        """A folder for the frozen disk layer of a fork of box SOURCE; where the layer goes."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = self.root / f"fork-{time.strftime('%Y%m%d%H%M%S')}-{os.urandom(3).hex()}"
        folder.mkdir()
        write_text_atomic(folder / "meta.json", json.dumps(
            {"kind": "fork", "source": source, "created": time.time()}, sort_keys=True))
        return folder / "disk.qcow2"

    def users(self, disks: dict[str, Path]) -> dict[str, list[str]]:
        """Folder name (template key or fork-...) -> the boxes (of DISKS: name -> disk)
        whose disks sit on it."""
        out: dict[str, list[str]] = {}
        root = self.root.resolve() if self.root.exists() else self.root
        for name, disk in sorted(disks.items()):
            for layer in backing_chain(disk):
                try:
                    rel = layer.resolve().relative_to(root)
                except ValueError:
                    continue
                out.setdefault(rel.parts[0], []).append(name)
        return out

    def record_seed(self, key: str, random_hex: str, keep: int = 4096) -> bool:
        """Remember a clone's fresh random bytes; False if another clone of KEY already
        answered with the same (its RNG state was not reseeded)."""
        t = self.get(key)
        if t is None:
            return True  # retired meanwhile: no other clone will be compared with this one
        if not random_hex:
            return False
        path = t.folder / "seeds"
        with self.locked(key):
            try:
                seen = path.read_text().split()
            except FileNotFoundError:
                seen = []
            if random_hex in seen:
                return False
            if path.parent.is_dir():
                write_text_atomic(path, "\n".join([*seen[-(keep - 1):], random_hex]) + "\n")
        return True

    def entries(self) -> list[dict[str, Any]]:
        """Templates and fork layers, with the bytes they hold on the host."""
        out: list[dict[str, Any]] = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            if d.name.startswith(".") or not d.is_dir():
                continue
            t = Template(d.name.split(".")[0], d)
            if not t.disk.is_file():
                continue
            kind = str(t.meta().get("kind") or "template")
            if kind == "template" and not (t.ram.is_file() and t.state.is_file()):
                kind = "retired"  # failed to restore: only the disk is left, for its boxes
            used = sum(p.stat().st_blocks * 512 for p in d.iterdir() if p.is_file())
            out.append({**t.meta(), "kind": kind, "key": d.name, "disk_and_memory_bytes": used,
                        "path": str(d)})
        return out

    def unused(self, users: dict[str, list[str]]) -> list[str]:
        """Folders no box sits on: every template and layer not in USERS, and what a
        crashed fork left (a layer folder without its disk)."""
        if not self.root.is_dir():
            return []
        return [d.name for d in sorted(self.root.iterdir())
                if d.is_dir() and not d.name.startswith(".") and d.name not in users]

    def _reap(self) -> None:
        """Staging folders whose builder died (kill -9) are removed, never used."""
        for d in self.root.glob(".tmp-*"):
            pid = d.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(d, ignore_errors=True)
        for d in self.root.glob(".rm-*"):
            shutil.rmtree(d, ignore_errors=True)

    @contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """One builder per key at a time (parallel applies, pools)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{key}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
