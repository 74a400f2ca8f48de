"""One RUN of a build, inside a microVM: the VM boots on an ext4 disk made from the
image's tree so far (under a qcow2 overlay it writes), with the build's network policy
and nothing of the host mounted, so an untrusted Dockerfile reaches only what that
policy allows. After the command the guest init streams the root file system it left
(`/.a3s/tar L`: metadata of every entry, contents of what the step touched) and the
host diffs that stream against the tree the step started from: that change is the
step's layer.

Threat: the Dockerfile and everything its RUN lines download are hostile. They run as
root in the guest, in the same confined VMM every box has. The host never mounts the
disk the guest wrote (a crafted ext4 would attack the host's kernel past the VM and its
jail): it only parses the guest's tar stream in userspace (build/guest_tree.py)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from a3s_box.imagebuild.diff import Change, DiskTree, diff_trees
from a3s_box.imagebuild.guest_tree import GuestTree, GuestTreeError
from a3s_box.drivers.base import BoxLaunch, BoxNetwork
from a3s_box.errors import BuildError, GuestError
from a3s_box.guest.protocol import BoxConfig, ExecRequest, Namespace

if TYPE_CHECKING:
    from a3s_box.guest.client import GuestClient
from a3s_box.home import Home
from a3s_box.image.rootfs import build_ext4, create_overlay, disk_usage
from a3s_box.drivers.registry import Capability, driver_with
from a3s_box.units import round_up_mib

HELPER = "/.a3s/container"
GUEST_TAR = "/.a3s/tar"
SPARE = 4 << 30  # room a RUN may write (sparse: costs only what it uses)
BOOT_TIMEOUT = 90.0  # a cold boot answers in ~2.5 s even under TCG; past this it hangs
Output = Callable[[bytes], None]


@dataclass(frozen=True)
class RunSpec:
    argv: tuple[str, ...]
    env: tuple[str, ...]  # KEY=VALUE
    workdir: str
    user: tuple[int, int] | None  # uid, gid: None for root
    network: BoxNetwork | None
    vcpus: int = 1
    memory_mib: int = 1024
    script: bytes | None = None  # RUN <<EOF with a #! line: executed as a file (ARGV empty)


def _run(argv: list[str], image: str, where: str, what: str, timeout: float = 600) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise BuildError(image, where, f"{what}: {(r.stderr or r.stdout).strip()[-300:]}")


def _fresh_overlay(base: Path, disk: Path, size: int, image: str, where: str) -> Path:
    """An empty qcow2 overlay DISK of SIZE bytes over BASE (replacing any earlier one)."""
    disk.unlink(missing_ok=True)
    create_overlay(base, disk, image)
    _run(["qemu-img", "resize", "-q", str(disk), str(size)], image, where, "sizing the step's disk")
    return disk


class RunResult:
    """The tree the step left (read from its VM) and its changes, until closed."""

    def __init__(self, work: Path, tree: GuestTree, changes: list[Change]) -> None:
        self.work, self.tree, self.changes = work, tree, changes

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def _read_tree(client: "GuestClient", work: Path, since: float, max_bytes: int, image: str,
               where: str) -> GuestTree:
    """The VM's root file system as its guest init streams it, parsed in userspace."""
    from a3s_box.files.tarstream import QueueReader, run_in_thread

    reader = QueueReader()
    result: list[GuestTree] = []
    thread, errors = run_in_thread(lambda: result.append(GuestTree.read(reader, work / "spool", max_bytes)))
    err: list[bytes] = []
    session = client.start(ExecRequest(argv=(GUEST_TAR, "L", f"{since:.9f}"), ns=Namespace.ROOT),
                           reader.feed, err.append)
    try:
        status = session.wait(None)
    finally:
        reader.close_feed()
        thread.join()
    if errors:
        e = errors[0]
        why = str(e) if isinstance(e, GuestTreeError) else f"{type(e).__name__}: {e}"
        raise BuildError(image, where, f"reading the step's file system: {why}") from e
    if status.code != 0 or not result:
        raise BuildError(image, where, "reading the step's file system: "
                         f"{b''.join(err).decode(errors='replace').strip()[-300:] or status.message}")
    return result[0]


# a RUN step is untrusted code with the build's network policy, in a jailed VMM
STEP_NEEDS = frozenset({Capability.NETWORK, Capability.CONFINEMENT})


def run_step(home: Home, tree: Path, spec: RunSpec, image: str, where: str,
             out: Output, err: Output) -> RunResult:
    """Run SPEC in a VM booted from TREE; the mounted result and its changes."""
    from a3s_box.guest.client import GuestClient

    build_root = home.root / "build"
    build_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=build_root))
    try:
        base = build_ext4(tree, work / "base.ext4", image)
        size = max(os.path.getsize(base), disk_usage(tree) + SPARE)
        size = round_up_mib(size)  # whole MiB: qemu-img wants sectors
        disk = _fresh_overlay(base, work / "disk.qcow2", size, image, where)
        # everything the tree had was written before this: what is newer, the step did
        touched_after = time.time()
        vm_id = "build-" + hashlib.sha256(str(work).encode()).hexdigest()[:12]
        launch = BoxLaunch(box_id=vm_id, rundir=work / "vm", vcpus=spec.vcpus, memory_mib=spec.memory_mib,
                           disk=disk, config=BoxConfig(hostname="build"), network=spec.network, boot="cold",
                           disk_size=size)
        driver = driver_with(STEP_NEEDS, home)
        try:
            handle = driver.start(launch, BOOT_TIMEOUT)
        except GuestError as e:
            # the guest never answered: no command ran, so a second boot on a fresh disk
            # is the same step (a rare early-boot hang under TCG was seen once in CI)
            err(f"a3s-box: the step's VM did not answer ({str(e).splitlines()[0]}); "
                "booting it again\n".encode())
            _fresh_overlay(base, disk, size, image, where)
            try:
                handle = driver.start(launch, BOOT_TIMEOUT)
            except GuestError as again:
                raise BuildError(image, where, f"the step's VM did not answer twice: "
                                 f"{str(again).removeprefix(f'box {vm_id}: ')}") from again
        try:
            client = GuestClient(driver.connect(handle, 10.0), box=f"{image} ({where})")
            try:
                client.hello(30.0)
                # the helper gives the step the disk's /tmp (kept in the layer, as Docker
                # does) instead of the guest's tmpfs, becomes USER, and executes a script
                # given on its stdin when there is no ARGV
                user = ("-u", f"{spec.user[0]}:{spec.user[1]}") if spec.user not in (None, (0, 0)) else ()
                argv = (HELPER, "-T", *user, "-w", spec.workdir or "/", "--", *spec.argv)
                session = client.start(ExecRequest(argv=argv, ns=Namespace.ROOT, env=spec.env,
                                                   workdir="/", stdin=spec.script is not None), out, err)
                if spec.script is not None:
                    session.write(spec.script)
                    session.close_stdin()
                status = session.wait(None)
                if status.code != 0:
                    why = status.message or f"exit status {status.code}"
                    raise BuildError(image, where, f"RUN failed: {why}")
                after = _read_tree(client, work, touched_after, size, image, where)
                client.shutdown()  # the guest powers off
            finally:
                client.close()
        finally:
            driver.stop(handle, 30.0)
        result = RunResult(work, after, [])
        try:
            result.changes = diff_trees(DiskTree(tree), after, touched_after)
        except BaseException:
            result.close()
            raise
        return result
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
