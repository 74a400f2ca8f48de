"""Can this host's KVM really run a guest? Boot one and see (cached in probe.json).

/dev/kvm existing is not enough: nested/paravirtual KVM (e.g. PVM) accepts the ioctl
calls, then a standard kernel hangs early in boot. So we boot the real guest kernel
and init with `a3s.root=none a3s.channel=none` (the init powers off at once) under
KVM with a short deadline. The verdict is cached, keyed by what could change it:
the host kernel, the /dev/kvm node, the QEMU version and the guest kernel.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from a3s_box.drivers.common.artifacts import GuestArtifacts
from a3s_box.drivers.qemu.argv import QemuSpec, host_arch, qemu_argv
from a3s_box.atomic import write_text_atomic
from a3s_box.errors import HostUnsupported
from a3s_box.filedigest import sha256_file
from a3s_box.home import Home

PROBE_TIMEOUT = 8.0  # a KVM boot to power-off takes well under a second on real hosts
KVM = Path("/dev/kvm")
NESTED_VERDICT = ("KVM is present but cannot run a standard guest on this host "
                  "(nested/paravirtual KVM?): using qemu/tcg")


@dataclass(frozen=True)
class ProbeResult:
    accel: str  # what to use: "kvm" or "tcg"
    kvm_usable: bool
    detail: str  # one sentence for people
    qemu_version: str
    cached: bool = False


_VERSIONS: dict[str, str] = {}


def qemu_version(binary: str) -> str:
    """`binary --version`, asked once per binary file (a box start asks twice)."""
    found = shutil.which(binary) or binary
    try:
        st = os.stat(found)
        ident = f"{os.path.realpath(found)}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        ident = ""
    if ident and ident in _VERSIONS:
        return _VERSIONS[ident]
    version = _ask_version(binary)
    if ident:
        _VERSIONS[ident] = version
    return version


def _ask_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HostUnsupported("qemu", f"{binary} does not run ({e}); install qemu-system") from e
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("QEMU emulator version ").strip()


def _kvm_precheck() -> str | None:
    """Why KVM is out of the question without booting anything; None if it might work."""
    if not KVM.exists():
        return "no /dev/kvm (no hardware virtualisation here): using qemu/tcg, slower"
    if not os.access(KVM, os.R_OK | os.W_OK):
        return ("/dev/kvm is not accessible to this user (add it to the kvm group): "
                "using qemu/tcg, slower")
    return None


def _probe_key(qemu_ver: str, art: GuestArtifacts) -> dict[str, str]:
    st = KVM.stat()
    return {"host_kernel": os.uname().release, "kvm": f"{st.st_ino}:{st.st_mtime_ns}",
            "qemu": qemu_ver, "kernel": sha256_file(art.kernel)[:16], "initramfs": art.initramfs.name}


def _boot_under_kvm(binary: str, art: GuestArtifacts) -> tuple[bool, str]:
    arch = host_arch()
    with tempfile.TemporaryDirectory(prefix="a3s-probe-") as tmp:
        log = Path(tmp) / "console.log"
        spec = QemuSpec(binary=binary, accel="kvm", vcpus=1, memory_mib=128,
                        kernel=art.kernel, initramfs=art.initramfs, console_log=log,
                        channel=None, qmp=None, machine=arch.machine, console=arch.console)
        try:
            proc = subprocess.run(qemu_argv(spec), stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            return False, NESTED_VERDICT  # run() killed it
        except OSError as e:
            return False, f"cannot run {binary}: {e}: using qemu/tcg"
        if proc.returncode == 0:
            return True, "KVM runs guests: using qemu/kvm"
        # e.g. `-cpu host` aborting on an MSR the paravirtual KVM does not implement
        why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return False, f"{NESTED_VERDICT} (qemu: {why})"


def probe_accelerators(home: Home, qemu_binary: str, artifacts: GuestArtifacts | None = None,
                       refresh: bool = False) -> ProbeResult:
    """Which accelerator to use with `qemu_binary`; boots a guest at most once per key."""
    version = qemu_version(qemu_binary)
    pre = _kvm_precheck()
    if pre is not None:
        return ProbeResult("tcg", False, pre, version)
    if artifacts is None:
        from a3s_box.drivers.common.artifacts import ensure_guest_artifacts

        artifacts = ensure_guest_artifacts(home)
    key = _probe_key(version, artifacts)
    cache = home.cache / "probe.json"
    if not refresh:
        try:
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                r = saved["result"]
                return ProbeResult(str(r["accel"]), bool(r["kvm_usable"]), str(r["detail"]),
                                   version, cached=True)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no or unreadable cache: probe again
    ok, detail = _boot_under_kvm(qemu_binary, artifacts)
    result = ProbeResult("kvm" if ok else "tcg", ok, detail, version)
    home.cache.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cache, json.dumps({"key": key, "result": asdict(result)},
                                        sort_keys=True, indent=1))
    return result
