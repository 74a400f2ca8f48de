"""The shim's steady state: a3s-shim-loop (loop/shim_loop.c, static with musl), which
shim.py execs once QEMU runs. The driver builds it into the cache (by source hash, like
the guest init) and names it in launch.json; `argv` is what shim.py hands it.

Why C: a forked Python shim writes about 4 MiB of its interpreter's pages (reference
counts, its heap) while it runs the box's loop, most of a parked box's cost on the host;
the loop in C is a few pages, and one Python program still sets every box up.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from a3s_box import cbuild
from a3s_box.logs.writer import LogLimits

SOURCES = Path(__file__).parent / "loop"
PROGRAM = "a3s-shim-loop"


def build_shim_loop(cache_dir: Path) -> Path:
    return cbuild.build_static(cache_dir, "shim-loop", PROGRAM, SOURCES, "the shim's loop")


@dataclass(frozen=True)
class LoopArgs:
    title: str  # argv[0]: what supervision.py recognises ("a3s_box.drivers.qemu.shim RUNDIR")
    rundir: Path
    box: str
    qemu_pid: int
    channel_fd: int  # listening: QEMU connects once
    channel_path: Path
    guest_path: Path
    console_fd: int | None  # listening: QEMU's serial console
    console_log: Path | None
    logging: LogLimits
    cgroups: Sequence[Path]  # removed once QEMU has exited
    volumes: Sequence[tuple[int, str]]  # virtiofsd's pid, the volume's target
    network: tuple[int, int] | None  # the network keeper's pid and the fd of its socket
    # or the registration held by descriptors (network/keeper.py Held.fds()), which the
    # loop hands to `PYTHON -m a3s_box.network.keeper` to register the box again
    registration: Sequence[int] | None
    published: Sequence[tuple[int, int]]  # with a held registration: (inner port, host listener fd)
    python: str
    home: Path
    stopping: str  # asked to stop before the loop ran ("" if not)

    def argv(self) -> list[str]:
        out = [self.title, f"--rundir={self.rundir}", f"--box={self.box}", f"--qemu={self.qemu_pid}",
               f"--channel={self.channel_fd}", f"--channel-path={self.channel_path}",
               f"--guest-path={self.guest_path}",
               f"--log-max-size={self.logging.max_size}", f"--log-max-files={self.logging.max_files}"]
        if self.console_fd is not None:
            out.append(f"--console={self.console_fd}")
        if self.console_log is not None:
            out.append(f"--console-log={self.console_log}")
        out += [f"--cgroup={p}" for p in self.cgroups]
        out += [f"--volume={pid}:{target}" for pid, target in self.volumes]
        if self.network is not None:
            out.append(f"--network={self.network[0]}:{self.network[1]}")
        if self.registration is not None:
            out += [f"--registration={','.join(str(fd) for fd in self.registration)}",
                    f"--python={self.python}", f"--home={self.home}"]
            out += [f"--published={port}:{fd}" for port, fd in self.published]
        if self.stopping:
            out.append(f"--stopping={self.stopping}")
        return out
