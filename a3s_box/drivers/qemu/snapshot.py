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
template that a box would use. The key covers everything a restore depends on: the
QEMU binary and version, kernel and initramfs, accelerator and TSC rate, vCPUs,
memory and the device set (QEMU silently accepts `-smp 2` over a 1-vCPU snapshot, so
the argv is part of it), and the image. A template that fails to restore is removed,
and the box boots cold.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from a3s_box.drivers.qemu.argv import QemuSpec, qemu_argv
from a3s_box.errors import DriverError

KEY_VERSION = "a3s-snapshot-1"


class SnapshotError(DriverError):
    """A template could not be made or restored (the box then boots cold)."""


def _file_id(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


_BINARY_HASHES: dict[str, str] = {}


def binary_hash(binary: str) -> str:
    path = Path(shutil.which(binary) or binary).resolve()
    ident = _file_id(path)
    if ident not in _BINARY_HASHES:
        _BINARY_HASHES[ident] = _file_hash(path)
    return _BINARY_HASHES[ident]


def normalized_argv(spec: QemuSpec) -> list[str]:
    """The argv with every per-box path replaced: what must match between a template and
    its clones (memory, vCPUs, machine, devices, kernel command line)."""
    anon = replace(spec, console_log=Path("CONSOLE"), channel=Path("CHANNEL") if spec.channel else None,
                   qmp=Path("QMP") if spec.qmp else None, disk=Path("DISK") if spec.disk else None,
                   memory_file=Path("RAM"), memory_shared=False, incoming=None)
    return qemu_argv(anon)


def snapshot_key(spec: QemuSpec, image: str, qemu_version: str, cpu_model: str = "") -> str:
    parts = {
        "v": KEY_VERSION, "argv": normalized_argv(spec), "qemu": qemu_version,
        "qemu_binary": binary_hash(spec.binary), "kernel": _file_hash(spec.kernel),
        "initramfs": spec.initramfs.name,  # named by the hash of init + modules
        "accel": spec.accel, "tsc_khz": spec.tsc_khz, "cpu": cpu_model, "image": image,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def host_cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


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
        t = Template(key, self.root / key)
        ok = all(p.is_file() for p in (t.ram, t.state, t.disk, t.folder / "meta.json"))
        return t if ok else None

    def staging(self, key: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        self._reap()
        d = self.root / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        return d

    def commit(self, key: str, staging: Path, meta: dict[str, Any]) -> Template:
        (staging / "meta.json").write_text(json.dumps({**meta, "key": key,
                                                        "created": time.time()}, sort_keys=True))
        final = self.root / key
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        return Template(key, final)

    def remove(self, key: str) -> None:
        folder = self.root / key
        trash = self.root / f".rm-{key}-{os.getpid()}"
        try:
            os.replace(folder, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def list(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            t = self.get(d.name) if not d.name.startswith(".") else None
            if t is None:
                continue
            used = sum(p.stat().st_blocks * 512 for p in d.iterdir() if p.is_file())
            out.append({**t.meta(), "key": t.key, "disk_and_memory_bytes": used, "path": str(d)})
        return out

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
