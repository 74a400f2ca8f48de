"""Can libkrun really run a guest on this host? Look, then boot one (cached).

Found library + libkrunfw + the symbols we need + a usable /dev/kvm (Linux) are
necessary, not sufficient: nested/paravirtual KVM (e.g. PVM) accepts a libkrun VM,
then stops it with KVM_EXIT_INTERNAL_ERROR after ~15 s. So we boot our guest init under
the real supervisor with `a3s.channel=none` (it powers off at once) and kill it after
PROBE_TIMEOUT. The verdict is cached in cache/krun-probe.json, keyed by what could
change it: the libraries (path, size, mtime), /dev/kvm, the host kernel, the guest init.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from a3s_box.drivers.base import HostSupport
from a3s_box.drivers.krun.library import Krun, LibraryPaths, load
from a3s_box.drivers.krun.rootfs import install_guest_files
from a3s_box.drivers.krun.spec import EXIT_NAMES, KrunSpec, box_spec
from a3s_box.atomic import write_text_atomic
from a3s_box.errors import BoxError
from a3s_box.home import Home

PROBE_TIMEOUT = 5.0  # a libkrun guest powers off in well under a second on real KVM/HVF
KVM = Path("/dev/kvm")
REQUIRED = ("krun_create_ctx", "krun_set_vm_config", "krun_set_workdir", "krun_set_env",
            "krun_add_vsock_port2", "krun_start_enter")
KVM_ERROR = "KVM_EXIT_INTERNAL_ERROR"
CANNOT = "libkrun found, but this host's KVM cannot run a standard guest"
FALLBACK = "using qemu/tcg"


@dataclass(frozen=True)
class ProbeVerdict:
    usable: bool
    detail: str
    cached: bool = False
    seconds: float = 0.0  # the probe boot, start to power-off (bench/boot.py's baseline)


def host_accel() -> str:
    return "hvf" if sys.platform == "darwin" else "kvm"


def missing_symbols(krun: Krun) -> list[str]:
    missing = [name for name in REQUIRED if not krun.has(name)]
    if not (krun.has("krun_set_root") or krun.has("krun_add_virtiofs")):
        missing.append("krun_set_root")
    return missing


def kvm_precheck() -> str | None:
    """Why KVM is out of the question without booting; None if it might work."""
    if sys.platform != "linux":
        return None
    if not KVM.exists():
        return f"libkrun found, but there is no /dev/kvm here; {FALLBACK}"
    if not os.access(KVM, os.R_OK | os.W_OK):
        return f"libkrun found, but /dev/kvm is not accessible (join the kvm group); {FALLBACK}"
    return None


def _file_key(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return path  # a loader name: the loader decides
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"


def probe_key(paths: LibraryPaths, init_binary: Path) -> dict[str, str]:
    kvm = ""
    if KVM.exists():
        st = KVM.stat()
        kvm = f"{st.st_ino}:{st.st_mtime_ns}"
    return {"libkrun": _file_key(paths.libkrun), "libkrunfw": _file_key(paths.firmware),
            "kvm": kvm, "host_kernel": os.uname().release, "guest_init": str(init_binary)}


def verdict_from(exit_record: dict[str, object] | None, vmm_log: str,
                 timeout: float, seconds: float = 0.0) -> ProbeVerdict:
    """The verdict from what the probe left behind (pure): its exit record, libkrun's log."""
    if KVM_ERROR in vmm_log:
        return ProbeVerdict(False, f"{CANNOT} ({KVM_ERROR}); {FALLBACK}")
    if exit_record is None:
        return ProbeVerdict(False, f"{CANNOT} (the probe guest did not stop within "
                            f"{timeout:g} s; nested KVM ends such guests with {KVM_ERROR}); "
                            f"{FALLBACK}")
    status = exit_record.get("status")
    reason = str(exit_record.get("reason", ""))
    if not isinstance(status, int) or status < 0 or status in EXIT_NAMES:
        return ProbeVerdict(False, f"libkrun could not run the probe guest ({reason}); "
                            f"{FALLBACK}")
    return ProbeVerdict(True, f"libkrun runs guests: using libkrun/{host_accel()}",
                        seconds=seconds)


def boot_probe(init_binary: Path, timeout: float = PROBE_TIMEOUT) -> ProbeVerdict:
    """Boot our guest init under a real supervisor, kill it after `timeout`. Also the
    raw libkrun boot-to-power-off time for bench/boot.py (`.seconds`, 0 if unusable)."""
    with tempfile.TemporaryDirectory(prefix="a3s-krun-probe-") as tmp:
        rundir = Path(tmp)
        root = rundir / "root"
        root.mkdir()
        base = box_spec("krun-probe", 1, 128, str(root), "", str(rundir / "console.log"))
        spec = KrunSpec(**{**asdict(base), "socket": "",
                           "boot_args": ("a3s.root=none", "a3s.channel=none")})
        install_guest_files("krun-probe", root, init_binary, spec)
        (rundir / "launch.json").write_text(spec.to_json())
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "a3s_box.drivers.krun.supervisor",
                                 str(rundir)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            proc.wait(timeout)
            seconds = time.perf_counter() - t0
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # still alive: the group is ours
            proc.wait()
            seconds = 0.0
        record: dict[str, object] | None = None
        try:
            loaded = json.loads((rundir / "exit.json").read_text())
            if isinstance(loaded, dict) and proc.returncode != -signal.SIGKILL:
                record = loaded
        except (OSError, ValueError):
            pass
        try:
            log = (rundir / "vmm.log").read_text(errors="replace")
        except OSError:
            log = ""
        return verdict_from(record, log, timeout, seconds)


def cached_probe(home: Home, paths: LibraryPaths, init_binary: Path,
                 refresh: bool = False, timeout: float = PROBE_TIMEOUT) -> ProbeVerdict:
    key = probe_key(paths, init_binary)
    cache = home.cache / "krun-probe.json"
    if not refresh:
        try:
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                r = saved["result"]
                return ProbeVerdict(bool(r["usable"]), str(r["detail"]), cached=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # no or unreadable cache: probe again
    verdict = boot_probe(init_binary, timeout)
    home.cache.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cache, json.dumps({"key": key, "result": asdict(verdict)},
                                        sort_keys=True, indent=1))
    return verdict


def host_support(home: Home, refresh: bool = False, build: bool = True,
                 krun: Krun | None = None) -> HostSupport:
    """libkrun's line in `box doctor`, and what `driver: auto` decides on.

    build=False (doctor) uses only an already built guest init and says so if none.
    `krun`: the library to judge (default: the one this process would use)."""
    name = "libkrun"
    try:
        krun = krun or load()
    except BoxError as e:
        return HostSupport(name, False, "", str(e).removeprefix("libkrun: "))
    if not krun.paths.firmware:
        return HostSupport(name, False, "", "libkrun found, but not libkrunfw (its guest "
                           "kernel): install libkrunfw")
    missing = missing_symbols(krun)
    if missing:
        return HostSupport(name, False, "", f"{krun.paths.libkrun} is too old: it lacks "
                           f"{', '.join(missing)}; upgrade libkrun")
    pre = kvm_precheck()
    if pre is not None:
        return HostSupport(name, False, "", pre)
    from a3s_box.guest.build import build_guest_init, cached_guest_init

    init = cached_guest_init(home.cache)
    if not build and not init.is_file():
        return HostSupport(name, False, "", "libkrun found; not probed until the guest init "
                           "is built (run `box setup`)")
    try:
        init = build_guest_init(home.cache)
    except BoxError as e:
        return HostSupport(name, False, "", f"libkrun found, but {e}")
    v = cached_probe(home, krun.paths, init, refresh=refresh)
    return HostSupport(name, v.usable, host_accel() if v.usable else "",
                       v.detail + (" [cached]" if v.cached else ""))
