"""The one small interface every VM driver implements (QEMU now, libkrun next).

A driver turns a `BoxLaunch` (everything needed to boot one box) into a running VM
whose guest init has been configured, and later observes, connects to and stops it.
It never decides *whether* to do so: that is the plan's job.

The VM outlives the `box` process: a driver starts a supervisor process per box
(detached, in its own session) and returns a `VmHandle`, a plain value that the
state store keeps and that any later `box` process can use to reach the VM again.
"""
from __future__ import annotations

import enum
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from a3s_box.guest.protocol import BoxConfig
from a3s_box.logs.writer import LogLimits
from a3s_box.network.policy import NetworkPolicy


@dataclass(frozen=True)
class BoxNetwork:
    """What the box's network reaches and the secrets its proxy puts into requests."""

    policy: NetworkPolicy  # JSON (to_json) only where it crosses into another process
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)  # NAME -> placeholder, env, hosts

    @property
    def enabled(self) -> bool:
        return self.policy.enabled


@dataclass(frozen=True)
class BoxVolume:
    """One volume of a box, as the driver mounts it."""

    kind: str  # "bind" (a host folder over virtio-fs), "volume" (a disk), "tmpfs"
    target: str  # absolute path in the guest
    read_only: bool = False
    source: str = ""  # bind: the host folder; volume: its disk file
    size: int = 0  # tmpfs: bytes (0: the guest's default)
    name: str = ""  # volume: its name

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class BoxLaunch:
    box_id: str  # unique on the host: "<project>.<box>" (or a pool member id)
    rundir: Path  # private folder for this box: sockets, pid files, console.log
    vcpus: int
    memory_mib: int
    config: BoxConfig  # handed to the guest init once it answers
    disk: Path | None = None  # copy-on-write root disk (qcow2 over the image's ext4)
    rootfs_dir: Path | None = None  # unpacked root folder (virtio-fs drivers)
    network: BoxNetwork | None = None  # None: no network device at all
    volumes: tuple[BoxVolume, ...] = ()
    boot: str = "cold"  # "snapshot": from a template of its snapshot key where possible
    image: str = ""  # the image digest (part of the snapshot key)
    # Pool members kept loaded and paused: start() returns before the agent exists (a
    # clone is restored but not resumed), unpark() resumes and configures it
    park: bool = False
    # "strict": the VMM confined as a3s_box.jail says, or no box; "relaxed": what the host allows
    security: str = "strict"
    logging: LogLimits = LogLimits()  # every log the host keeps for the box: cap and files
    disk_size: int | None = None  # resources.disk: the root disk's size (None: the image's)
    # A network namespace someone else made and addressed (a pod's, by CNI): the VM's NIC
    # is plugged into it (network/podnet.py) and takes its address. Boots cold.
    pod_network: str | None = None
    # The pod's egress goes through the host's egress proxy (an allow-list annotation):
    # the namespace routes for the VM instead of bridging it (podnet.plug(routed=True)).
    pod_egress: bool = False


@dataclass(frozen=True)
class VmHandle:
    """How to find a running VM again; stored as JSON in the state store."""

    driver: str
    box_id: str
    pid: int  # the supervisor process (owns the VM process)
    channel: str  # unix socket speaking the guest protocol
    console_log: str
    accel: str  # "kvm", "tcg", "hvf"
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "driver": self.driver,
            "box_id": self.box_id,
            "pid": self.pid,
            "channel": self.channel,
            "console_log": self.console_log,
            "accel": self.accel,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> "VmHandle":
        extra = data.get("extra") or {}
        assert isinstance(extra, dict)
        return cls(
            driver=str(data["driver"]),
            box_id=str(data["box_id"]),
            pid=int(str(data["pid"])),
            channel=str(data["channel"]),
            console_log=str(data["console_log"]),
            accel=str(data["accel"]),
            extra={str(k): str(v) for k, v in extra.items()},
        )


class VmState(str, enum.Enum):
    RUNNING = "running"
    EXITED = "exited"  # the supervisor is gone; `exit_reason` says why if known
    MISSING = "missing"  # nothing of it is left on the host


@dataclass(frozen=True)
class VmObservation:
    state: VmState
    exit_reason: str = ""
    clean: bool = False  # EXITED: the guest powered off by itself (status 0), not a crash or a kill
    # RUNNING under a supervisor an older a3s-box started, which this one cannot adopt:
    # why (the plan replaces the box; stop() still ends it cleanly)
    outdated: str = ""


@dataclass(frozen=True)
class HostSupport:
    """What `box doctor` prints for a driver, and what `driver: auto` decides on."""

    driver: str
    usable: bool
    accel: str  # what it would use: "kvm", "tcg", "hvf", or ""
    detail: str  # one plain sentence: why (not) and what to do


class SnapshotStore(Protocol):
    """A driver's saved templates and frozen fork layers on the host (`box snapshot`)."""

    def entries(self) -> list[dict[str, Any]]: ...
    def users(self, disks: dict[str, Path]) -> dict[str, list[str]]: ...
    def unused(self, users: dict[str, list[str]]) -> list[str]: ...
    def remove(self, name: str) -> None: ...


@runtime_checkable
class Driver(Protocol):
    name: str

    def host_support(self) -> HostSupport:
        """Probe (cached) whether this host can run guests with this driver."""
        ...

    def start(self, launch: BoxLaunch, timeout: float) -> VmHandle:
        """Boot the VM, wait for the guest init, send it CONFIG; return once the
        agent is started. On any failure nothing of the VM is left running."""
        ...

    def observe(self, handle: VmHandle) -> VmObservation:
        ...

    def connect(self, handle: VmHandle, timeout: float) -> socket.socket:
        """A fresh byte stream to the guest init (guest protocol, HELLO not yet sent)."""
        ...

    def stop(self, handle: VmHandle, timeout: float) -> None:
        """Shut the guest down cleanly, kill it after `timeout`; idempotent. Removes
        the VM's sockets and pid files but not the disk (the caller owns it)."""
        ...

    def pause(self, handle: VmHandle) -> None:
        """Stop the VM's vCPUs (memory, processes and open files are kept)."""
        ...

    def resume(self, handle: VmHandle) -> None:
        ...

    def unpark(self, handle: VmHandle, launch: BoxLaunch, timeout: float) -> VmHandle:
        """Run a VM that start() left parked (launch.park) and start its agent; a handle
        without `parked` in its extra is returned as it is."""
        ...

    def fork(self, source: VmHandle, source_launch: BoxLaunch, launch: BoxLaunch,
             timeout: float) -> VmHandle:
        """A new VM (LAUNCH) from the running SOURCE's memory and disk at this instant;
        SOURCE continues unchanged. On failure nothing of the new VM is left."""
        ...
