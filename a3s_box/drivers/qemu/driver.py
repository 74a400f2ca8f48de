"""The QEMU driver: one detached shim per box, which runs QEMU and serves guest.sock.

start() writes RUNDIR/launch.json, has the home's fork server fork a shim for RUNDIR in a
new session (a3s_box.forkserver), waits for guest.sock (the guest answered HELLO), and sends
CONFIG. Any failure, timeout or Ctrl-C on the way kills the shim's whole process group
(shim + QEMU) and removes its sockets, then raises naming the box with the end of
console.log. QEMU failures become DriverError, guest silence GuestError.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from a3s_box.drivers.common.artifacts import GuestArtifacts, ensure_guest_artifacts
from a3s_box.drivers.base import BoxLaunch, HostSupport, VmHandle, VmObservation
from a3s_box.drivers.qemu.probe import probe_accelerators, qemu_version
from a3s_box.drivers.common.boxnet import install_box_ca, prepare_network
from a3s_box.drivers.common.environ import host_process_env
from a3s_box.forkserver.client import SpawnError, spawn
from a3s_box.drivers.qemu.virtiofs import mount_volumes, volume_devices
from a3s_box.drivers.qemu.qmp import Qmp, QmpError
from a3s_box.drivers.qemu.snapshot import (SnapshotError, Template, TemplateStore, clone_spec,
                                           create_overlay_on, host_cpu_model, snapshot_key, template_bytes,
                                           template_spec)
from a3s_box.drivers.qemu.argv import QemuSpec, hotplug_devices, host_arch, qemu_argv, read_host_tsc_khz
from a3s_box.drivers.qemu.confine import hand_over, kvm_group, plan_jail, security_level, vmm_dir
from a3s_box.drivers.qemu.shim_loop import build_shim_loop
from a3s_box import subids
from a3s_box.jail.files import give
from a3s_box.jail.ids import IdTable
from a3s_box.jail.spec import JailSpec, box_limits
from a3s_box.jail.support import QEMU_SANDBOX
from a3s_box.polling import PathWatch
from a3s_box.disks import space
from a3s_box.disks.overlay import OverlayError, create_overlay
from a3s_box.errors import BoxError, DiskFullError, DriverError, GuestError, HostUnsupported
from a3s_box.drivers.common.supervision import (connect_unix, exit_reason, is_supervisor,
                                         observe_supervised, rundir_of, stop_supervised,
                                         wait_gone)
from a3s_box.guest.client import GuestClient
from a3s_box.guest.protocol import PREPARE_MAX_TARGETS, BoxConfig, Prepared
from a3s_box.network import podnet
from a3s_box.home import Home
from a3s_box.logs.reader import read_lines, select
from a3s_box.logs.writer import LogLimits

CONSOLE = "console.log"
GUEST_SOCK = "guest.sock"
RUNTIME_FILES = ("guest.sock", "channel.sock", "console.sock", "qmp.sock", "shim.pid", "launch.json",
                 ".guest.sock.tmp", "network.json", "supervisor.json")


SHIM = "a3s_box.drivers.qemu.shim"
# Shims of older releases that may still run boxes after an upgrade: seen as running
# (outdated: the plan replaces their boxes) and stopped cleanly, never leaked.
SHIMS = (SHIM, "a3s_box.drivers.shim")


def console_tail(path: Path, lines: int = 15) -> str:
    text = select(read_lines(path), tail=lines).decode(errors="replace")
    return "\n".join("  | " + ln for ln in text.splitlines()) or "(no console output)"


def _pid_is_shim(pid: int, rundir: str) -> bool:
    return is_supervisor(pid, rundir, SHIM)


def _wait_gone(pid: int, rundir: str, timeout: float) -> bool:
    return wait_gone(pid, rundir, SHIM, timeout)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# Measured: the Debian cloud kernel and our initramfs power off during boot below this.
QEMU_MIN_MEMORY_MIB = 80


class QemuDriver:
    name = "qemu"

    def __init__(self, home: Home, binary: str | None = None,
                 artifacts: GuestArtifacts | None = None) -> None:
        self.home = home
        self.artifacts = artifacts  # None: the provisioned ones (tests boot others)
        self.arch = host_arch()
        self.binary = binary or os.environ.get("A3S_BOX_QEMU") or self.arch.binary

    # --- host -----------------------------------------------------------------------
    def host_support(self) -> HostSupport:
        if shutil.which(self.binary) is None:
            return HostSupport(self.name, False, "",
                               f"{self.binary} not found: install qemu-system (box setup)")
        try:
            r = probe_accelerators(self.home, self.binary)
        except BoxError as e:
            return HostSupport(self.name, False, "", str(e))
        return HostSupport(self.name, True, r.accel, r.detail)

    def _accel(self) -> str:
        support = self.host_support()
        if not support.usable:
            raise HostUnsupported(self.name, support.detail)
        return support.accel

    # --- start ------------------------------------------------------------------------
    def start(self, launch: BoxLaunch, timeout: float) -> VmHandle:
        art = self.artifacts or ensure_guest_artifacts(self.home)
        accel = self._accel()
        rundir = launch.rundir
        rundir.mkdir(parents=True, exist_ok=True)
        _remove_runtime_files(rundir)
        (rundir / "exit.json").unlink(missing_ok=True)
        forwards = prepare_network(launch) if launch.network and launch.network.enabled else None
        shares, volume_disks, virtiofsd = volume_devices(launch)
        spec = self._spec(launch, art, accel, forwards, shares, volume_disks)
        conf = _Confinement(*security_level(launch.box_id, launch.security, self.binary))
        if conf.seccomp:
            spec = replace(spec, sandbox=QEMU_SANDBOX)
        extra: dict[str, object] = {"network": forwards is not None, "virtiofsd": virtiofsd}
        if launch.pod_network is not None:
            try:
                iface = podnet.plug(launch.pod_network, routed=launch.pod_egress)
            except podnet.PodNetError as e:
                raise DriverError(launch.box_id, str(e)) from e
            spec = replace(spec, tap_mac=iface.mac, guest_net=iface.guest_arg())
            extra["pod_netns"] = launch.pod_network
        boot = "cold"
        if launch.boot == "snapshot":
            why_not = snapshot_ineligible(launch, self.arch.machine, art.pci_hotplug)
            if why_not:
                boot = f"cold ({why_not})"
            else:
                try:
                    return self._start_clone(launch, spec, timeout, conf, extra)
                except SnapshotError as e:
                    boot = f"cold (snapshot restore failed: {str(e).removeprefix(f'box {launch.box_id}: ')})"
                    _note(rundir, boot)
                    _remove_runtime_files(rundir)
                    (rundir / "exit.json").unlink(missing_ok=True)
        # the egress proxy is the host's daemon, outside the box's cgroup: virtiofsd alone joins it
        jail = self._jail(launch.box_id, rundir, spec, conf,
                          network=forwards is not None or launch.pod_network is not None, helpers=len(virtiofsd))
        handle, pgid = self._spawn(launch.box_id, rundir, spec, extra, jail=jail, label=conf.label,
                                   logging=launch.logging)
        done = self._finish(launch, handle, pgid, timeout, boot)
        if launch.park:  # booted cold: all it can save is CPU
            self.pause(done)
            done = _with_extra(done, parked="paused")
        return done

    def unpark(self, handle: VmHandle, launch: BoxLaunch, timeout: float) -> VmHandle:
        parked = handle.extra.get("parked")
        extra = {k: v for k, v in handle.extra.items() if k != "parked"}
        bare = replace(handle, extra=extra)
        if parked == "paused":
            self.resume(handle)
        elif parked == "restored":
            store = TemplateStore(self.home.cache)
            key = handle.extra.get("template", "")
            return self._finish(launch, bare, int(handle.extra["pgid"]), timeout, extra.get("boot", ""),
                                lambda h: self.resume(h), _unique_randomness(store, key, launch.box_id),
                                hotplugged=any(v.kind == "bind" for v in launch.volumes))
        return bare

    def _spec(self, launch: BoxLaunch, art: GuestArtifacts, accel: str,
              forwards: tuple[tuple[int, int], ...] | None, shares: tuple[tuple[Path, str], ...],
              volume_disks: tuple[Path, ...]) -> QemuSpec:
        rundir = launch.rundir
        return QemuSpec(binary=self.binary, accel=accel, vcpus=launch.vcpus,
                        memory_mib=launch.memory_mib, kernel=art.kernel,
                        initramfs=art.initramfs, console_log=rundir / CONSOLE,
                        console_socket=rundir / "console.sock",
                        channel=rundir / "channel.sock", qmp=vmm_dir(rundir) / "qmp.sock",
                        disk=launch.disk, machine=self.arch.machine, console=self.arch.console,
                        tsc_khz=read_host_tsc_khz(), forwards=forwards, shares=shares,
                        volume_disks=volume_disks, tap=str(podnet.TAP_FD) if launch.pod_network else None)

    def _spawn(self, box_id: str, rundir: Path, spec: QemuSpec, extra: dict[str, object],
               detach: bool = True, jail: JailSpec | None = None,
               label: str = "", logging: LogLimits = LogLimits()) -> tuple[VmHandle, int]:
        """Write RUNDIR/launch.json and start the shim (QEMU its child, confined by JAIL);
        the handle and the process group to kill if anything goes wrong."""
        vmm_dir(rundir).mkdir(mode=0o700, exist_ok=True)
        try:
            loop = build_shim_loop(self.home.cache)
        except BoxError as e:
            raise DriverError(box_id, str(e)) from e
        tmp = rundir / ".launch.json"
        tmp.write_text(json.dumps({"box_id": box_id, "argv": qemu_argv(spec), "loop": str(loop),
                                   # TCG's 128 MiB code cache is madvised for huge pages: each
                                   # touched part costs 2 MiB, for no gain without KVM's EPT
                                   "huge_pages": spec.accel != "tcg",
                                   "channel": str(rundir / "channel.sock"),
                                   "console": str(spec.console_log),
                                   "console_socket": str(spec.console_socket) if spec.console_socket else None,
                                   "guest_socket": str(rundir / GUEST_SOCK),
                                   "jail": jail.to_json() if jail else None,
                                   "logging": logging.to_json(), **extra}, indent=1))
        os.replace(tmp, rundir / "launch.json")
        with open(rundir / "shim.log", "ab") as log:
            log.write(f"--- start {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            log.flush()
            if detach:
                return self._fork_shim(box_id, rundir, spec, log.fileno(), jail, label)
            try:
                starter = subprocess.Popen(
                    [sys.executable, "-m", SHIM, str(rundir)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                    close_fds=True, preexec_fn=_die_with_parent, env=host_process_env())
            except OSError as e:
                raise DriverError(box_id, f"cannot start the shim: {e}") from e
        pgid = starter.pid  # session leader; the shim and QEMU stay in its group
        try:
            for _ in range(500):
                try:  # the shim may have made the file and not yet written it
                    if (rundir / "shim.pid").read_text().strip():
                        break
                except FileNotFoundError:
                    pass
                time.sleep(0.01)
            pid = int((rundir / "shim.pid").read_text())
        except BaseException:
            _killpg(pgid, signal.SIGKILL)
            raise
        return self._handle(box_id, rundir, spec, pid, pgid, jail, label), pgid

    def _fork_shim(self, box_id: str, rundir: Path, spec: QemuSpec, log: int,
                   jail: JailSpec | None, label: str) -> tuple[VmHandle, int]:
        """A detached shim, forked off the home's fork server: no interpreter to start,
        and what it does not write stays shared with the other boxes' shims."""
        with open(os.devnull, "rb") as null:
            try:
                pid = spawn(self.home.root, SHIM, [str(rundir)], (null.fileno(), log, log), host_process_env())
            except SpawnError as e:
                raise DriverError(box_id, f"cannot start the shim: {e}") from e
        # its own session: the shim and QEMU are process group PID
        return self._handle(box_id, rundir, spec, pid, pid, jail, label), pid

    def _handle(self, box_id: str, rundir: Path, spec: QemuSpec, pid: int, pgid: int,
                jail: JailSpec | None, label: str) -> VmHandle:
        return VmHandle(driver=self.name, box_id=box_id, pid=pid, channel=str(rundir / GUEST_SOCK),
                        console_log=str(rundir / CONSOLE), accel=spec.accel,
                        extra={"pgid": str(pgid), "rundir": str(rundir),
                               "qmp": str(spec.qmp), "security": label or "none",
                               **({"uid": str(jail.uid)} if jail else {}),
                               **({"memory_file": "1"} if spec.memory_file else {})})

    def _finish(self, launch: BoxLaunch, handle: VmHandle, pgid: int, timeout: float,
                boot: str, ready: Any = None, fresh: Any = None, configure: bool = True,
                hotplugged: bool = False, net: str = "") -> VmHandle:
        """From a started shim to a configured guest; on any failure nothing is left.
        `ready(handle)` runs first (a clone's restore); `fresh(random_hex)` checks the
        guest's fresh random bytes after SEED; HOTPLUGGED: its shares were hot-plugged
        (the guest waits for them to mount); NET: its hot-plugged NIC's a3s.net value."""
        rundir = launch.rundir
        try:
            deadline = time.monotonic() + timeout
            if ready is not None:
                ready(handle)
            try:
                self._wait_ready(handle, deadline)
            except DriverError as e:
                if launch.memory_mib < QEMU_MIN_MEMORY_MIB:
                    said = str(e).removeprefix(f"box {launch.box_id}: ")
                    raise DriverError(launch.box_id, f"{said}\nhint: the Debian guest kernel needs about "
                                      f"{QEMU_MIN_MEMORY_MIB}Mi to boot; this box has "
                                      f"{launch.memory_mib}Mi") from e
                raise
            with GuestClient(self.connect(handle, 5.0), box=launch.box_id) as client:
                client.hello(max(deadline - time.monotonic(), 1.0))
                random_hex = client.seed()  # before anything random happens in the guest
                if fresh is not None:
                    fresh(random_hex)
                if net:
                    client.net(net, max(deadline - time.monotonic(), 1.0))
                if configure:  # a fork's agent is already running
                    if launch.network is not None and launch.network.secrets:
                        install_box_ca(client, rundir)
                    mount_volumes(client, launch, hotplugged)
                    client.configure(launch.config, max(deadline - time.monotonic(), 1.0))
            return _with_extra(handle, boot=boot)
        except BaseException as e:
            # Ctrl-C included: nothing of this VM may outlive a failed start
            _killpg(pgid, signal.SIGKILL)
            _wait_gone(handle.pid, str(rundir), 5.0)
            _remove_runtime_files(rundir)
            if isinstance(e, (OSError, ValueError)):
                raise DriverError(launch.box_id, f"start failed: {e}\nconsole:\n"
                                  f"{console_tail(rundir / CONSOLE)}") from e
            raise

    # --- snapshots ---------------------------------------------------------------------
    def _start_clone(self, launch: BoxLaunch, spec: QemuSpec, timeout: float,
                     conf: "_Confinement", extra: dict[str, object]) -> VmHandle:
        """EXTRA: what the shim sets up (launch.json). A box's network: the template's NIC
        (user-mode networking, the same guest address in every box) ran in an empty
        namespace; the clone's runs in the box's own, behind its own egress proxy, and
        CONFIG gives the guest its resolver, trust store and secrets' placeholders as after
        a cold boot. Shares (their virtiofsd in EXTRA) and a pod's NIC are not in the
        template: they are hot-plugged into the clone, and NET gives the guest the pod's
        address."""
        virtiofsd = list(extra.get("virtiofsd") or [])  # type: ignore[call-overload]
        network = bool(extra.get("network")) or launch.pod_network is not None
        tspec = template_spec(spec)
        key = snapshot_key(tspec, launch.image, qemu_version(self.binary),
                           host_cpu_model() if spec.accel == "kvm" else "", launch.disk_size or 0,
                           template_targets(launch))
        store = TemplateStore(self.home.cache)
        template = store.get(key) or self._build_template(store, key, launch, tspec, timeout, conf)
        assert launch.disk is not None
        cold_disk = launch.disk.with_name(f".{launch.disk.name}.cold")
        os.replace(launch.disk, cold_disk)  # kept until the clone answers: a cold boot needs it
        try:
            template.new_overlay(launch.disk)
            # the boot a clone did not repeat, so `box logs` still shows kernel and init
            boot_log = template.folder / CONSOLE
            if boot_log.is_file():
                with open(launch.rundir / CONSOLE, "ab") as out:
                    out.write(boot_log.read_bytes()[-(1 << 20):])
            clone = clone_spec(spec, template)
            jail = self._jail(launch.box_id, launch.rundir, clone, conf, network=network, helpers=len(virtiofsd),
                              groups=(self._template_gid(key),))
            if clone.memory_fd is not None:  # the shim copies the template's RAM for it
                extra = {**extra, "clone_ram": {"template": str(template.ram), "bytes": launch.memory_mib << 20}}
            handle, pgid = self._spawn(launch.box_id, launch.rundir, clone, extra,
                                       jail=jail, label=conf.label, logging=launch.logging)
            devices = hotplug_devices(clone)
            boot = f"snapshot {key[:12]}"
            fresh = _unique_randomness(store, key, launch.box_id)
            try:
                if launch.park:
                    try:
                        self._restore(handle, template, resume=False, devices=devices)
                    except BaseException:
                        _killpg(pgid, signal.SIGKILL)
                        _wait_gone(handle.pid, str(launch.rundir), 5.0)
                        raise
                    done = _with_extra(handle, boot=boot, parked="restored", template=key)
                else:
                    done = self._finish(launch, handle, pgid, min(timeout, 30.0), boot,
                                        lambda h: self._restore(h, template, resume=True, devices=devices),
                                        fresh, hotplugged=bool(devices),
                                        net=clone.guest_net.removeprefix("a3s.net=") if clone.tap else "")
                    done = _with_extra(done, template=key)
            except (DriverError, GuestError) as e:
                store.retire(key)  # a template that does not restore is never used again
                raise SnapshotError(launch.box_id, str(e).splitlines()[0].removeprefix(
                    f"box {launch.box_id}: ")) from e
            cold_disk.unlink(missing_ok=True)
            return done
        except BaseException:
            os.replace(cold_disk, launch.disk)
            raise

    def _restore(self, handle: VmHandle, template: Template, resume: bool,
                 devices: list[dict[str, str]] | None = None) -> None:
        """Load the template's device state into a clone started with `-incoming defer`
        (its RAM already holds the template's); hot-plug DEVICES (its shares: the guest
        probes them once it runs); then run it, or leave it paused (parked)."""
        try:
            with Qmp(handle.extra["qmp"], handle.box_id, timeout=10.0) as q:
                q.command("migrate-set-capabilities",
                          capabilities=[{"capability": "x-ignore-shared", "state": True},
                                        {"capability": "events", "state": True}])
                with open(template.state, "rb") as state_file:  # a sandboxed QEMU spawns nothing
                    q.pass_fd("state", state_file.fileno())
                q.command("migrate-incoming", uri="fd:state")
                # QEMU says when the load ends (a poll saw it up to half its time late) ...
                q.wait_event("MIGRATION", lambda d: d.get("status") in ("completed", "failed", "cancelled"), 15.0)
                # ... and the VM leaves "inmigrate" at once after (paused: store-global-state=off)
                state = q.wait_until_not("query-status", "inmigrate", 15.0)
                migrated = str(q.command("query-migrate").get("status", ""))
                if state not in ("paused", "running") or migrated == "failed":
                    raise QmpError(handle.box_id, f"the template did not load (VM {state}, "
                                   f"migration {migrated or 'not started'})")
                for device in devices or ():
                    q.command("device_add", **device)
                if state == "paused" and resume:
                    q.command("cont")
        except QmpError as e:
            raise SnapshotError(handle.box_id, str(e).removeprefix(f"box {handle.box_id}: ")) from e

    def _build_template(self, store: TemplateStore, key: str, launch: BoxLaunch, spec: QemuSpec,
                        timeout: float, conf: "_Confinement") -> Template:
        with store.locked(key):
            found = store.get(key)
            if found is not None:
                return found
            assert launch.disk is not None
            try:
                st = store.staging(key, template_bytes(launch.memory_mib, launch.disk))
            except DiskFullError as e:
                raise SnapshotError(launch.box_id, f"no template saved: {e}") from e
            try:
                return self._make_template(store, key, st, launch, spec, timeout, conf)
            except BaseException as e:
                shutil.rmtree(st, ignore_errors=True)  # a half-made template holds its RAM file
                if space.is_full(e):
                    raise SnapshotError(launch.box_id, "no template saved: " + str(space.disk_full(
                        f"snapshot template {key[:12]}", store.root))) from e
                raise

    def _make_template(self, store: TemplateStore, key: str, st: Path, launch: BoxLaunch, spec: QemuSpec,
                       timeout: float, conf: "_Confinement") -> Template:
        assert launch.disk is not None
        shutil.copyfile(launch.disk, st / "disk.qcow2")  # a fresh overlay of the image
        with open(st / "ram", "wb") as f:
            f.truncate(launch.memory_mib << 20)
        tspec = replace(spec, console_log=st / CONSOLE, console_socket=st / "console.sock",
                        channel=st / "channel.sock",
                        qmp=vmm_dir(st) / "qmp.sock", disk=st / "disk.qcow2", memory_file=st / "ram",
                        memory_shared=True)
        gid = self._template_gid(key)
        give(st / "ram", 0, gid, 0o660)  # clones open it read-write too (QEMU 7.2): their group
        jail = self._jail(f"template-{key}", st, tspec, conf, network=False, helpers=0, groups=(gid,))
        handle, pgid = self._spawn(f"template-{key[:12]}", st, tspec, {"network": False, "virtiofsd": []},
                                   detach=False, jail=jail, label=conf.label)
        prepared = Prepared(warmed_kib=0, settled_ms=None)
        try:
            self._wait_ready(handle, time.monotonic() + timeout)  # the init answered: no agent yet
            with GuestClient(self.connect(handle, 5.0), box=launch.box_id) as client:
                client.hello(10.0)
                # a clone's agent isolated as this box's adopts these namespaces at CONFIG
                # ... and settles (guest/init/quiesce.c); its CRNG made ready now, so that no
                # clone runs the kernel's first-initialization path (each reseeds at once)
                # ... reads what clones start first into its page cache (guest/init/warm.c) ...
                # ... makes the folders its volumes mount on, which its key names ...
                prepared = client.prepare(int(launch.config.agent_isolate), *warm_commands(launch.config),
                                          template_targets(launch))
                client.seed()
            with Qmp(vmm_dir(st) / "qmp.sock", launch.box_id, timeout=10.0) as q:
                q.command("migrate-set-capabilities",
                          capabilities=[{"capability": "x-ignore-shared", "state": True}])
                q.command("stop")
                with open(st / "state", "wb") as state_file:
                    q.pass_fd("state", state_file.fileno())
                q.command("migrate", uri="fd:state")
                q.wait_status(("completed",), 60.0)
                try:
                    q.command("quit")  # its image locks must be gone before a clone opens the disk
                except QmpError:
                    pass
            _wait_gone(handle.pid, str(st), 10.0)
        except (DriverError, GuestError) as e:
            raise SnapshotError(launch.box_id, f"making the template: {e}") from e
        finally:
            _killpg(pgid, signal.SIGKILL)
            _wait_gone(handle.pid, str(st), 5.0)
        for name in RUNTIME_FILES + ("exit.json",):
            (st / name).unlink(missing_ok=True)
        shutil.rmtree(vmm_dir(st), ignore_errors=True)
        shutil.rmtree(st / "jail", ignore_errors=True)
        for frozen in ("disk.qcow2", "state", CONSOLE):  # no VMM may change them again
            if (st / frozen).exists():
                give(st / frozen, 0, 0, 0o644)
        if jail is not None:
            self._ids().release(f"template-{key}")
        return store.commit(key, st, {"image": launch.image, "vcpus": launch.vcpus,
                                      "memory_mib": launch.memory_mib, "accel": spec.accel,
                                      "guest_settled_ms": prepared.settled_ms,
                                      "guest_warmed_kib": prepared.warmed_kib})

    # --- fork ----------------------------------------------------------------------------
    def fork(self, source: VmHandle, source_launch: BoxLaunch, launch: BoxLaunch,
             timeout: float) -> VmHandle:
        """A new VM from SOURCE's memory and disk at this instant; SOURCE runs on unchanged.

        The source pauses; its disk overlay is frozen as a layer in the snapshot store
        (both boxes continue on new overlays over it); its RAM and device state migrate
        straight into the new QEMU over a unix socket; the source resumes. The fork is
        reseeded (entropy, clock) but not configured again: its agent is the source's,
        mid-run."""
        why_not = fork_ineligible(source_launch)
        if why_not:
            raise DriverError(source_launch.box_id, f"cannot fork: {why_not}")
        if "parked" in source.extra:
            raise DriverError(source_launch.box_id, "cannot fork a parked pool member")
        assert launch.disk is not None and source_launch.disk is not None
        art = self.artifacts or ensure_guest_artifacts(self.home)
        rundir = launch.rundir
        rundir.mkdir(parents=True, exist_ok=True)
        _remove_runtime_files(rundir)
        store = TemplateStore(self.home.cache)
        if launch.network is not None and launch.network.secrets:
            # the fork's memory trusts its source's CA: its own proxy signs with that CA
            for name in ("ca.pem", "ca.key"):
                if (source_launch.rundir / name).is_file():
                    shutil.copy2(source_launch.rundir / name, rundir / name)
                    os.chmod(rundir / name, 0o600)
        forwards = prepare_network(launch) if launch.network and launch.network.enabled else None
        _shares, volume_disks, _virtiofsd = volume_devices(launch)
        spec = self._spec(launch, art, source.accel, forwards, (), volume_disks)
        conf = _Confinement(*security_level(launch.box_id, launch.security, self.binary))
        if conf.seccomp:
            spec = replace(spec, sandbox=QEMU_SANDBOX)
        if source.extra.get("memory_file"):  # a clone (or its fork): RAM is the `mem` backend
            ram = rundir / "ram"
            with open(ram, "wb") as f:
                f.truncate(launch.memory_mib << 20)  # sparse, mapped privately: no disk use
            spec = replace(spec, memory_file=ram, memory_shared=False)
        spec = replace(spec, incoming="defer")
        with Qmp(source.extra["qmp"], source.box_id, timeout=10.0) as src:
            # all of RAM goes (a clone's is a private mapping); a clone restored with
            # x-ignore-shared would otherwise demand it of the fork too
            src.command("migrate-set-capabilities",
                        capabilities=[{"capability": "x-ignore-shared", "state": False}])
            src.command("stop")
            try:
                layer = store.new_layer(source_launch.box_id)
                self._freeze_disk(src, source_launch.disk, layer, int(source.extra.get("uid", 0)))
                create_overlay_on(layer, launch.disk)
                network = forwards is not None  # its own namespace and proxy; the source's flows stay the source's
                jail = self._jail(launch.box_id, rundir, spec, conf, network=network, helpers=0)
                handle, pgid = self._spawn(launch.box_id, rundir, spec, {"network": network, "virtiofsd": []},
                                           jail=jail, label=conf.label, logging=launch.logging)

                def migrate(h: VmHandle) -> None:
                    # one socket pair, an end to each QEMU: neither can reach the other's files
                    ours, theirs = socket.socketpair()
                    try:
                        with Qmp(h.extra["qmp"], h.box_id, timeout=10.0) as dst:
                            dst.pass_fd("fork", ours.fileno())
                            src.pass_fd("fork", theirs.fileno())
                            dst.command("migrate-incoming", uri="fd:fork")
                            src.command("migrate", uri="fd:fork")
                            src.wait_status(("completed",), 120.0)
                            state = dst.wait_until_not("query-status", "inmigrate", 30.0)
                            if state == "paused":
                                dst.command("cont")
                            elif state != "running":
                                raise QmpError(h.box_id, f"the fork did not load (VM {state})")
                    finally:
                        ours.close()
                        theirs.close()
                return self._finish(launch, handle, pgid, timeout, f"fork of {source_launch.box_id}",
                                    migrate, configure=False)
            finally:
                src.command("cont")  # the source runs on whatever happened to the fork

    def _freeze_disk(self, q: Qmp, disk: Path, layer: Path, uid: int) -> None:
        """Make DISK's current content the read-only LAYER; the running VM continues on a
        new overlay over it, at DISK's path (so a restart boots from what it wrote)."""
        size = int(json.loads(subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(disk)], capture_output=True, text=True,
            check=True, timeout=30).stdout)["virtual-size"])
        os.link(disk, layer)  # the same inode: what the VM wrote so far, now also the layer
        give(layer, 0, 0, 0o644)  # read-only to every VMM from now on, its old writer included
        nxt = disk.with_name(f".{disk.name}.next")
        try:  # unsafe: the layer is the running VM's open disk
            create_overlay(layer, nxt, "qcow2", size, unsafe=True)
        except OverlayError as e:
            raise DriverError(disk.parent.name, str(e)) from e
        node = next(str(b["inserted"]["node-name"]) for b in q.command("query-block")
                    if b.get("device") == "root")
        give(nxt, uid, uid)
        fd = os.open(nxt, os.O_RDWR | os.O_CLOEXEC)
        try:  # handed over open: a confined QEMU cannot open host paths
            fdset = q.add_fd(fd)
        finally:
            os.close(fd)
        q.command("blockdev-add", driver="qcow2", **{"node-name": "root-next"},
                  file={"driver": "file", "filename": f"/dev/fdset/{fdset}"}, backing=None)
        q.command("blockdev-snapshot", node=node, overlay="root-next")
        os.replace(nxt, disk)  # QEMU keeps its open file; the path now names the overlay

    # --- confinement ----------------------------------------------------------------------
    def _ids(self) -> IdTable:
        ids = subids.subordinate_ids()
        if os.geteuid() != 0 and ids is not None:  # the box user namespace's ids 1..
            return IdTable(self.home.root / "jail-ids.json", base=1, span=ids.count)
        return IdTable(self.home.root / "jail-ids.json")

    def _alive(self, name: str) -> bool:
        """Whether the owner of an id is still there (a box's folder, a template build)."""
        if name.startswith("template-"):
            key = name.removeprefix("template-")
            root = self.home.cache / "snapshots"
            return any(root.glob(f"{key}.*")) or any(root.glob(f".tmp-{key}-*"))
        return self.home.box_dir(name).exists()

    def _template_gid(self, key: str) -> int:
        if os.geteuid() != 0:  # without root the template's clones reach its RAM file as others
            return 1
        return IdTable(self.home.root / "jail-gids.json").allocate(f"template-{key}", self._alive)

    def _jail(self, name: str, rundir: Path, spec: QemuSpec, conf: "_Confinement", network: bool,
              helpers: int, groups: tuple[int, ...] = ()) -> JailSpec | None:
        """The jail of the QEMU for NAME (None where security: relaxed allows none), with its
        files handed to its uid."""
        if not conf.jail:
            return None
        uid = self._ids().allocate(name, self._alive)
        limits = box_limits(spec.memory_mib, spec.vcpus, spec.accel, helpers) if conf.cgroup else None
        if os.geteuid() != 0:  # ids of the box's user namespace, which always has a network one
            jail = replace(plan_jail(name, rundir, spec, uid, uid, (), True, limits, None),
                           userns=True, keep_groups=spec.accel == "kvm")
        else:
            jail = plan_jail(name, rundir, spec, uid, uid, groups, network, limits, kvm_group())
        hand_over(jail, rundir, spec)
        return jail

    def _wait_ready(self, handle: VmHandle, deadline: float) -> None:
        rundir = Path(handle.extra["rundir"])
        # the loop renames guest.sock into place once the guest answered; a shim that
        # gives up renames exit.json into the same folder: either ends the wait at once
        with PathWatch(handle.channel) as watch:
            while not Path(handle.channel).exists():
                exit_file = rundir / "exit.json"
                if exit_file.exists() or not _pid_is_shim(handle.pid, str(rundir)):
                    reason = exit_reason(rundir) or "the shim died (see shim.log)"
                    raise DriverError(handle.box_id, f"VM stopped before the guest answered: "
                                      f"{reason}\nconsole:\n{console_tail(Path(handle.console_log))}")
                if time.monotonic() >= deadline:
                    raise GuestError(handle.box_id, "the guest init did not answer in time; "
                                     f"console:\n{console_tail(Path(handle.console_log))}")
                watch.wait(deadline)

    # --- running VMs ----------------------------------------------------------------------
    def observe(self, handle: VmHandle) -> VmObservation:
        return observe_supervised(handle, SHIMS, "shim")

    def connect(self, handle: VmHandle, timeout: float) -> socket.socket:
        return connect_unix(handle.box_id, handle.channel, timeout)

    def pause(self, handle: VmHandle) -> None:
        with Qmp(handle.extra["qmp"], handle.box_id) as q:
            q.command("stop")

    def resume(self, handle: VmHandle) -> None:
        with Qmp(handle.extra["qmp"], handle.box_id) as q:
            q.command("cont")

    def stop(self, handle: VmHandle, timeout: float) -> None:
        try:
            self.resume(handle)  # a paused guest cannot shut down cleanly
        except (QmpError, KeyError):
            pass
        stop_supervised(handle, SHIMS, self.connect, timeout)
        # no killpg here: once its leader is long gone a process group id may be reused
        _remove_runtime_files(rundir_of(handle))


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG: a template dies with its builder


@dataclass(frozen=True)
class _Confinement:
    jail: bool
    cgroup: bool
    seccomp: bool
    label: str  # what `box ps` shows


# execvp's search path in the guest (musl) for an agent whose environment has no PATH
GUEST_DEFAULT_PATH = "/usr/local/bin:/bin:/usr/bin"


def warm_commands(config: BoxConfig) -> tuple[str, tuple[str, ...]]:
    """(PATH, commands) a template's guest reads in advance: the building box's agent
    and the image's shell, which clones of it most likely start first (any other
    command still runs, read from the disk as on a cold boot)."""
    path = next((e.partition("=")[2] for e in config.env if e.startswith("PATH=")), GUEST_DEFAULT_PATH)
    commands = tuple(dict.fromkeys(c for c in (*config.argv[:1], "/bin/sh") if c))
    return path, commands


def template_targets(launch: BoxLaunch) -> tuple[str, ...]:
    """The folders a template's disk is given for LAUNCH's volumes to mount on (the
    guest's MOUNT would make each in every clone): part of the template's key, so that
    no box finds a folder its own Boxfile did not ask for. None past what PREPARE takes."""
    targets = tuple(dict.fromkeys(v.target for v in launch.volumes))
    return targets if len(targets) <= PREPARE_MAX_TARGETS else ()


def _unique_randomness(store: TemplateStore, key: str, box_id: str) -> Any:
    """The check of a clone's fresh random bytes (its SEED answer) against every other
    clone of the template: the same bytes twice mean shared RNG state, never handed out."""
    def check(random_hex: str) -> None:
        if not store.record_seed(key, random_hex):
            raise SnapshotError(box_id, "its random bytes after reseeding repeat another clone's")
    return check


def _with_extra(handle: VmHandle, **extra: str) -> VmHandle:
    return replace(handle, extra={**handle.extra, **extra})


def _note(rundir: Path, text: str) -> None:
    with open(rundir / "shim.log", "a") as f:
        f.write(f"a3s-box: {text}\n")


def snapshot_ineligible(launch: BoxLaunch, machine: str, pci_hotplug: bool = True) -> str:
    """Why this box cannot start from a snapshot ("" when it can). A network, named
    volumes (their disks: same sizes share a template), tmpfs (mounted after the
    restore) and bind volumes (virtio-fs, hot-plugged into microvm's PCIe root ports:
    QEMU 7.2 cannot migrate it) can."""
    plugged = any(v.kind == "bind" for v in launch.volumes) or launch.pod_network is not None
    if plugged and not machine.startswith("microvm"):
        return ("bind volumes (virtio-fs) and a pod's NIC are hot-plugged into a clone only on microvm, "
                f"not {machine.split(',')[0]}")
    if plugged and not pci_hotplug:
        return "the guest kernel has no virtio_pci to take hot-plugged devices (`box setup` provisions it)"
    if launch.disk is None or not launch.image:
        return "no disk image to snapshot"
    return ""


def fork_ineligible(launch: BoxLaunch) -> str:
    """Why a box cannot be forked ("" when it can). A fork with a network gets its own
    namespace and proxy (the source's open connections do not follow it)."""
    if any(v.kind == "bind" for v in launch.volumes):
        return "bind volumes (virtio-fs) are not migratable in QEMU 7.2"
    if any(v.kind == "volume" for v in launch.volumes):
        return "a named volume's disk cannot be shared by two boxes"
    if launch.disk is None:
        return "it has no disk"
    return ""


def _remove_runtime_files(rundir: Path) -> None:
    for name in RUNTIME_FILES:
        (rundir / name).unlink(missing_ok=True)
    shutil.rmtree(vmm_dir(rundir), ignore_errors=True)  # the QMP socket's folder
    try:
        (rundir / "jail").rmdir()  # the (empty) folder a confined QEMU's root was mounted on
    except OSError:
        pass
    for sock in rundir.glob("vfs*.sock*"):
        sock.unlink(missing_ok=True)
