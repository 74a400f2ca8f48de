"""containerd runs containers in a3s-box microVMs through containerd-shim-a3sbox-v2:
Debian's containerd 1.6 on a private socket and root, `ctr run --runtime
io.containerd.a3sbox.v2` (real VMs). The container sees the guest's kernel; exit codes,
separate streams, stdin, `ctr task exec`, kill and rm work; nothing is left after."""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import BoxCli
from tests.e2e.containerd_host import containerd, import_image

pytestmark = pytest.mark.vm
RUNTIME = "io.containerd.a3sbox.v2"
HELLO = "docker.io/library/hello:1"


@pytest.fixture(scope="module")
def ctr(box: BoxCli, hello_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    with containerd(tmp_path_factory.mktemp("containerd"), box.home) as sock:
        import_image(sock, hello_image, HELLO)
        yield ["ctr", "-a", str(sock)]


def _run(ctr: list[str], *args: str, stdin: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ctr, *args], capture_output=True, text=True, input=stdin, timeout=timeout)


def _guest_kernel(box: BoxCli) -> str:
    return (box.home / "cache" / "kernels" / "current").read_text().strip()  # the release box setup chose


def test_ctr_run_gives_the_guests_kernel_exit_codes_streams_and_stdin(ctr: list[str], box: BoxCli,
                                                                    tmp_path: Path) -> None:
    with open(tmp_path / "events", "wb") as out:
        events = subprocess.Popen([*ctr, "events"], stdout=out, stderr=subprocess.STDOUT)
    time.sleep(0.5)
    r = _run(ctr, "run", "--rm", "--runtime", RUNTIME, HELLO, "k1", "uname", "-r")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == _guest_kernel(box) != os.uname().release
    r = _run(ctr, "run", "--rm", "--runtime", RUNTIME, HELLO, "k2", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr.splitlines()[0]) == (7, "out\n", "err")
    r = _run(ctr, "run", "--rm", "--runtime", RUNTIME, HELLO, "k3", "cat", stdin="fed in\n")
    assert (r.returncode, r.stdout) == (0, "fed in\n")
    time.sleep(1)
    events.terminate()
    events.wait(10)
    seen = (tmp_path / "events").read_text()
    # the shim told containerd how each ended (what its CRI plugin tracks tasks by)
    assert '/tasks/exit {"container_id":"k2","id":"k2"' in seen and '"exit_status":7' in seen, seen


def test_task_exec_kill_and_rm_leave_nothing_behind(ctr: list[str], box: BoxCli) -> None:
    assert _run(ctr, "run", "-d", "--runtime", RUNTIME, HELLO, "k4", "sleep", "100000").returncode == 0
    r = _run(ctr, "task", "exec", "--exec-id", "e1", "k4", "sh", "-c", "echo in-exec; exit 3")
    assert (r.returncode, r.stdout) == (3, "in-exec\n")
    assert "RUNNING" in _run(ctr, "task", "ls").stdout
    assert _run(ctr, "task", "kill", "k4").returncode == 0
    deadline = time.monotonic() + 60
    while "STOPPED" not in _run(ctr, "task", "ls").stdout and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "STOPPED" in _run(ctr, "task", "ls").stdout
    assert _run(ctr, "task", "rm", "k4").returncode == 0
    assert _run(ctr, "container", "rm", "k4").returncode == 0
    def left() -> list[str]:
        return [(p / "cmdline").read_bytes().decode(errors="replace") for p in Path("/proc").iterdir()
                if p.name.isdigit() and _mentions(p, (b"/default/k4/", b"-id\x00k4\x00"))]
    deadline = time.monotonic() + 60  # the shim exits on containerd's Shutdown, just after rm
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left() == []
    assert "a3sbox" not in Path("/proc/self/mountinfo").read_text()
    assert str(ctr[2]).rsplit("/", 1)[0] not in Path("/proc/self/mountinfo").read_text()


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _mentions(proc: Path, needles: tuple[bytes, ...]) -> bool:
    try:
        cmd = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    return any(n in cmd for n in needles)


def test_a_shim_killed_outright_leaves_no_vm_once_containerd_cleans_up(ctr: list[str]) -> None:
    """containerd runs `shim delete` when a shim vanishes; that must take the VM down."""
    def qemus() -> set[int]:
        return {int(p.name) for p in Path("/proc").iterdir()
                if p.name.isdigit() and _mentions(p, (b"qemu-system",))}
    before = qemus()
    assert _run(ctr, "run", "-d", "--runtime", RUNTIME, HELLO, "k5", "sleep", "100000").returncode == 0
    assert len(qemus() - before) == 1
    found = [int(p.name) for p in Path("/proc").iterdir()
             if p.name.isdigit() and _mentions(p, (b"-id\x00k5\x00",)) and _mentions(p, (b"-socket",))]
    # the daemon itself, not a child of it caught between fork and exec (it runs containerd
    # to publish each event): the one whose parent is not among them
    daemons = [pid for pid in found if _parent(pid) not in found]
    assert len(daemons) == 1, found
    os.kill(daemons[0], 9)
    deadline = time.monotonic() + 60
    while qemus() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert qemus() - before == set()
    _run(ctr, "task", "rm", "-f", "k5")
    assert _run(ctr, "container", "rm", "k5").returncode == 0
    assert "/default/k5/" not in Path("/proc/self/mountinfo").read_text()
