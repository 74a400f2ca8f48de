"""Every failure a user can see is one of these, carrying where it happened.

    BoxError                      base; the CLI prints str(err) and exits 1
    ├── BoxfileError              a Boxfile is invalid: .problems, each FILE:LINE:COL (exit 2)
    ├── DockerfileError           a Dockerfile is invalid or uses what is not supported:
    │                             .problems, each FILE:LINE:COL (exit 2)
    ├── ImageError                an image could not be pulled/imported/unpacked: .ref
    │   ├── RegistryError         the registry answered badly or not at all: .ref, .status
    │   └── BuildError            a build step failed: .ref (the image), .where (FILE:LINE)
    ├── StateError                the state store is unreadable or locked
    ├── DriverError               a VM could not be created/started/stopped: .box
    │   └── HostUnsupported       the host cannot run this driver (no KVM, no libkrun...): .reason
    ├── DiskBudgetError           a box's disk would not fit the host's free space: .box
    ├── DiskFullError             a write to the host's disk found no space, or was refused
    │                             before it began: .path, .mount, .needed, .free
    ├── GuestError                the guest init did not answer or broke the protocol: .box
    └── PortError                 a TCP port inside a box could not be reached (nothing
                                  listens there), or the connection to it failed: .box, .port

Foreign errors (OSError, httpx, subprocess, sqlite3, libkrun -errno) are translated
into these at the edge that calls them, and raised `from` the original. ENOSPC/EDQUOT
and SQLITE_FULL become DiskFullError (a3s_box.disks.space), whatever was being written.
"""
from __future__ import annotations

from dataclasses import dataclass


class BoxError(Exception):
    """Base of every a3s-box failure a user can see."""

    exit_code = 1


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a Boxfile, at a place in a file."""

    file: str
    line: int  # 1-based; 0 when the whole file is at fault
    column: int  # 1-based
    path: str  # dotted field path, "" for the document
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class BoxfileError(BoxError):
    """The Boxfile is invalid; `problems` lists every problem found, in file order."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class DockerfileError(BoxError):
    """A Dockerfile is invalid; `problems` lists every problem found (path: the instruction)."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ImageError(BoxError):
    def __init__(self, ref: str, message: str) -> None:
        self.ref = ref
        super().__init__(f"image {ref}: {message}")


class RegistryError(ImageError):
    def __init__(self, ref: str, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(ref, message)


class BuildError(ImageError):
    """A build step failed (a RUN exited non-zero, a COPY source is missing...)."""

    def __init__(self, ref: str, where: str, message: str) -> None:
        self.where = where
        super().__init__(ref, f"{where}: {message}" if where else message)


class StateError(BoxError):
    pass


class DriverError(BoxError):
    def __init__(self, box: str, message: str) -> None:
        self.box = box
        super().__init__(f"box {box}: {message}" if box else message)


class HostUnsupported(DriverError):
    def __init__(self, driver: str, reason: str) -> None:
        self.driver = driver
        self.reason = reason
        super().__init__("", f"{driver}: {reason}")


class DiskBudgetError(BoxError):
    """A box's disk would not fit: refused before the box boots (never retried)."""

    def __init__(self, box: str, message: str) -> None:
        self.box = box
        super().__init__(f"box {box}: {message}")


class DiskFullError(BoxError):
    """No space on the host's disk for what WHAT writes under PATH (the folder written
    to: the home, a `box cp` destination; MOUNT is its file system when that is
    elsewhere). NEEDED: the bytes it still had to write, FREE: the bytes free after
    what it half wrote was removed (None when not known). Never retried: space has to
    be made first."""

    def __init__(self, what: str, path: str, *, mount: str | None = None, needed: int | None = None,
                 free: int | None = None) -> None:
        self.what, self.path, self.mount, self.needed, self.free = what, path, mount, needed, free
        figures = [f"file system {mount}"] if mount and mount != path else []
        if needed is not None:
            figures.append(f"needs {_size(needed, up=True)} more")
        if free is not None:
            figures.append(f"{_size(free, up=False)} free")
        tail = f" ({'; '.join(figures)})" if figures else ""
        super().__init__(f"{what}: no space left on {path}{tail}" if what else f"no space left on {path}{tail}")


def _size(n: int, *, up: bool) -> str:
    """Bytes for people, rounded UP (what is needed) or down (what is free), so that
    the figures never make a refusal look wrong: KiB below 1 MiB, MiB below 1 GiB,
    then GiB to a tenth."""
    def div(a: int, b: int) -> int:
        return -(-a // b) if up else a // b

    if n >= 1 << 30:
        return f"{div(n * 10, 1 << 30) / 10:.1f} GiB"
    if n >= 1 << 20:
        return f"{div(n, 1 << 20)} MiB"
    return f"{div(n, 1 << 10)} KiB"


class GuestError(BoxError):
    def __init__(self, box: str, message: str) -> None:
        self.box = box
        super().__init__(f"box {box}: {message}" if box else message)


class PortError(BoxError):
    """A connection to PORT inside BOX (its loopback) failed: refused, reset, or the
    guest's relay went wrong."""

    def __init__(self, box: str, port: int, message: str) -> None:
        self.box, self.port = box, port
        super().__init__(f"box {box}: port {port}: {message}")
