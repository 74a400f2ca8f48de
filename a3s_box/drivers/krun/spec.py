"""What one libkrun VM is made of (RUNDIR/launch.json), and how its exit is named.

Pure values and functions: no library, no files. The driver writes a `KrunSpec`, the
supervisor reads it back and applies it to a libkrun context (configure.py).

How our guest init runs under libkrun: the root folder is the box's own copy, shared
over virtio-fs with the tag /dev/root; libkrun's init (init.krun) mounts /proc, /sys,
/dev, reads /.krun_config.json and, told by KRUN_INIT_PID1=1, execs our init (/init)
as PID 1 instead of forking it. Our init takes its boot options from /proc/cmdline, so
those few short `a3s.*` words go through krun_set_env (which libkrun puts on the
kernel command line); the box's own environment goes over the guest protocol (CONFIG).
"""
from __future__ import annotations

import json
import os
import signal
from dataclasses import asdict, dataclass, field

GUEST_PORT = 1024  # the vsock port our guest init listens on (docs/guest-protocol.md)
GUEST_INIT_PATH = "/init"  # inside the root; our init installs itself from here
KRUN_CONFIG = ".krun_config.json"

# The VMM's own exits (libkrun's vmm crate) and libkrun init's, as `box ps` names them.
EXIT_NAMES = {
    125: "guest init failed before starting the program (libkrun init)",
    126: "the guest program is not executable",
    127: "the guest program was not found in the root",
    148: "VMM fault: bad system call (seccomp)",
    149: "VMM fault: SIGBUS",
    150: "VMM fault: SIGSEGV",
}


@dataclass(frozen=True)
class KrunSpec:
    box_id: str
    vcpus: int
    memory_mib: int
    root: str  # host folder shared as the guest's root (virtio-fs)
    socket: str  # host unix socket libkrun creates for `port`; "" for none (the probe)
    console: str  # guest console output (the box's log)
    argv: tuple[str, ...] = (GUEST_INIT_PATH,)  # what libkrun's init runs
    env: tuple[str, ...] = ()  # the program's environment (in /.krun_config.json)
    boot_args: tuple[str, ...] = ()  # `key=value` words for the kernel command line
    workdir: str = "/"
    rlimits: tuple[str, ...] = ()  # libkrun's "ID=CUR:MAX" words, see rlimit_words()
    port: int = GUEST_PORT
    log_level: int = 1  # libkrun's: 1 = errors only (the probe reads them)
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "KrunSpec":
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("launch.json is not an object")
        for key in ("argv", "env", "boot_args", "rlimits"):
            d[key] = tuple(str(x) for x in d.get(key, ()))
        return cls(**d)


# The guest is Linux whatever the host is, so its numbers, not the host's `resource` ones.
LINUX_RLIMITS = {"core": 4, "nproc": 6, "nofile": 7, "memlock": 8, "stack": 3}
BOX_RLIMITS = {"nofile": (65536, 65536)}  # the kernel's 1024 is too few for agents


def rlimit_words(limits: dict[str, tuple[int, int]]) -> tuple[str, ...]:
    """{"nofile": (1024, 4096)} -> ("7=1024:4096",), what libkrun's init parses."""
    words = []
    for name, (cur, hard) in sorted(limits.items()):
        if name not in LINUX_RLIMITS:
            raise ValueError(f"unknown rlimit {name!r} (known: {', '.join(sorted(LINUX_RLIMITS))})")
        if not 0 <= cur <= hard:
            raise ValueError(f"rlimit {name}: soft {cur} must be between 0 and hard {hard}")
        words.append(f"{LINUX_RLIMITS[name]}={cur}:{hard}")
    return tuple(words)


def box_spec(box_id: str, vcpus: int, memory_mib: int, root: str, socket: str,
             console: str, debug: bool = False) -> KrunSpec:
    """The spec that boots our guest init serving the guest protocol on vsock."""
    boot = ["a3s.root=none", f"a3s.channel=vsock:{GUEST_PORT}"] + (["a3s.debug=1"] if debug
                                                                   else [])
    return KrunSpec(box_id=box_id, vcpus=vcpus, memory_mib=memory_mib, root=root,
                    socket=socket, console=console, argv=(GUEST_INIT_PATH,),
                    env=("KRUN_INIT_PID1=1",
                         "PATH=/.a3s:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
                    boot_args=tuple(boot), rlimits=rlimit_words(BOX_RLIMITS))


def krun_config(spec: KrunSpec) -> dict[str, object]:
    """/.krun_config.json, read by libkrun's init (OCI image config field names)."""
    return {"Cmd": list(spec.argv), "Env": list(spec.env), "WorkingDir": spec.workdir}


def describe_exit(status: int) -> str:
    """A waitpid status as `box ps` shows it: 'exited 127: the guest program was ...'."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"VMM killed by {name}"
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
    known = EXIT_NAMES.get(code)
    return f"exited {code}: {known}" if known else f"exited {code}"
