"""A user without root (a fresh account, no sudo, not in the kvm group) runs a box with
an allow-listed network, a secret and a bind volume: the box's namespace belongs to a
user namespace of that user's, the egress daemon is the user's own, virtiofsd runs in a
user namespace mapping only the user, and the allow-list, the secret and the volume's
guards hold exactly as for root. Real VMs (TCG), the real egress daemon and virtiofsd,
curl in the guest.

Faked: nothing of a3s-box. The user's Python is Debian's /usr/bin/python3 in a venv of
the user's own that reads this checkout's dependencies (the tests' interpreter lives
under /root, which no other user can read)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from a3s_box.network import wire
from tests.network.conftest import Internet, internet  # noqa: F401 - the fixture
from tests.network.tools_image import build_tools_image
from tests.socket_peer import ask_as

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a user")]
TOKEN = "sk-live-rootless-5150"


@dataclass
class User:
    name: str
    uid: int
    dir: Path  # its own, 0700
    python: str
    env: dict[str, str]
    port: int  # the box's published port on the host's loopback

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
                               "--reset-env", "env", "-i", *(f"{k}={v}" for k, v in self.env.items()), *argv],
                              capture_output=True, text=True, timeout=timeout, cwd=self.dir)

    def box(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.run(self.python, "-m", "a3s_box.cli", *args, timeout=timeout)


def _skip_unless_possible() -> None:
    if shutil.which("useradd") is None or not Path("/usr/bin/python3").exists():
        pytest.skip("needs useradd and Debian's python3")
    base = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2])"],
                          capture_output=True, text=True).stdout.strip()
    if base != str(tuple(sys.version_info[:2])):
        pytest.skip(f"Debian's python3 is {base}, these tests' {tuple(sys.version_info[:2])}")


BOXFILE = """apiVersion: box.a3s.dev/v1
images:
  tools: {{path: {image}}}
boxes:
  net:
    image: tools
    security: relaxed
    resources: {{memory: 160Mi}}
    namespaces: {{agent: {{command: ["busybox", "httpd", "-f", "-p", "80", "-h", "/etc"]}}}}
    network:
      mode: allowlist
      egress: ["api.test:{http}", "api.test:{https}"]
      hosts: {{api.test: 127.0.0.1}}
      ports: ["127.0.0.1:{port}:80"]
    secrets:
      TOKEN: {{env: A3S_TEST_TOKEN, hosts: ["api.test:{https}"]}}
    volumes: ["{work}:/work"]
"""


@contextmanager
def _account(suffix: str, internet: Internet) -> Iterator[User]:  # noqa: F811
    """A fresh user with a Python of its own, `box setup` done and the Boxfile above
    applied (a box `net`: network, secret, published port, bind volume)."""
    _skip_unless_possible()
    name = f"a3srl{suffix}{os.getpid() % 100000}"
    home = Path(f"/tmp/{name}")
    subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/sh", name], check=True)
    try:
        uid = int(subprocess.run(["id", "-u", name], capture_output=True, text=True, check=True).stdout)
        home.chmod(0o700)
        venv = home / "venv"  # the user's Python: Debian's, reading this checkout's dependencies
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
        site = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
        (venv / "lib" / site.parent.name / "site-packages" / "a3s-test.pth").write_text(
            f"import site; site.addsitedir({str(site)!r})\n")
        image = build_tools_image(home / "image")
        shutil.copy(internet.ca, home / "internet-ca.pem")  # the user's trust store for "the internet"
        (home / "work").mkdir()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        (home / "Boxfile.yaml").write_text(BOXFILE.format(image=image, http=internet.http_port,
                                                          https=internet.https_port, port=port, work=home / "work"))
        subprocess.run(["chown", "-R", f"{name}:{name}", str(home)], check=True)
        env = {"HOME": str(home), "PATH": "/usr/sbin:/usr/bin:/bin", "A3S_BOX_HOME": str(home / "a3s"),
               "SSL_CERT_FILE": str(home / "internet-ca.pem"), "A3S_TEST_TOKEN": f"{TOKEN}-{suffix}"}
        u = User(name, uid, home, str(venv / "bin" / "python"), env, port)
        r = u.run(u.python, "-c", "import a3s_box")
        if r.returncode != 0:
            pytest.skip(f"this checkout's environment is not readable by another user: {r.stderr.strip()}")
        r = u.box("setup")
        assert r.returncode == 0, r.stdout + r.stderr
        r = u.box("apply", "-f", "Boxfile.yaml")
        assert r.returncode == 0, r.stdout + r.stderr
        yield u
        u.box("delete", "-f", "Boxfile.yaml")
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run(["userdel", "--remove", name], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def user(internet: Internet) -> Iterator[User]:  # noqa: F811
    with _account("a", internet) as u:
        yield u


@pytest.fixture(scope="module")
def neighbour(user: User, internet: Internet) -> Iterator[User]:  # noqa: F811
    """A second user, its box of the same name running beside the first's."""
    with _account("b", internet) as u:
        yield u


def _sh(user: User, script: str) -> tuple[int, str]:
    r = user.box("exec", "net", "--", "sh", "-c", script, timeout=120)
    return r.returncode, r.stdout + r.stderr


def _processes_of(uid: int, needle: bytes) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and p.stat().st_uid == uid and needle in (p / "cmdline").read_bytes():
                out.append(int(p.name))
        except OSError:
            continue
    return out


def _status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def test_doctor_says_it_runs_rootless_and_so_does_the_network(user: User) -> None:
    r = user.box("doctor")
    line = next(x for x in r.stdout.splitlines() if "network" in x)
    assert line.startswith("✓") and "rootless" in line, r.stdout
    mode = next(x for x in r.stdout.splitlines() if " mode " in x)
    assert f"rootless ({user.name}, uid {user.uid})" in mode and str(user.dir / "a3s") in mode
    confinement = next(x for x in r.stdout.splitlines() if " confinement " in x)
    if not Path("/sys/fs/cgroup/cgroup.controllers").exists():  # v1, as on this test host
        assert "cgroup v1 here" in confinement and "v1 cannot be delegated to a user" in confinement


def test_the_allow_list_holds_for_a_box_without_root(user: User, internet: Internet) -> None:  # noqa: F811
    h = internet.http_port
    code, out = _sh(user, f"/usr/bin/curl -sS -m 20 http://api.test:{h}/rootless-allowed")
    assert code == 0 and json.loads(out)["path"] == "/rootless-allowed", out
    before = len(internet.requests)
    code, out = _sh(user, f"/usr/bin/curl -sS -m 10 http://evil.test:{h}/x; echo rc=$?; "
                          f"/usr/bin/curl -fsS -m 10 http://10.0.2.2:{h}/x; echo rc=$?; "
                          f"/usr/bin/curl -fsS -m 10 http://127.0.0.1:{h}/x; echo rc=$?")
    assert "rc=6" in out and out.count("rc=0") == 0, out
    assert len(internet.requests) == before


def test_a_secret_stays_out_of_a_rootless_box(user: User, internet: Internet) -> None:  # noqa: F811
    code, out = _sh(user, f"echo $TOKEN; cat /proc/*/environ 2>/dev/null | grep -c '{TOKEN}'")
    placeholder, in_procs = out.split()
    assert placeholder.startswith("a3s-secret-token-") and in_procs == "0"
    code, out = _sh(user, f'/usr/bin/curl -sS -m 20 -H "Authorization: Bearer $TOKEN" '
                          f"https://api.test:{internet.https_port}/rootless-secret")
    assert code == 0, out
    assert internet.last("/rootless-secret")["headers"]["authorization"] == f"Bearer {TOKEN}-a"
    assert TOKEN not in out


def test_the_daemon_is_the_users_and_the_vmm_an_id_of_its_subordinate_range_jailed(user: User) -> None:
    daemons = _processes_of(user.uid, b"a3s_box.network.daemon")
    assert len(daemons) == 1
    st = _status(daemons[0])
    assert st["Uid"].split() == [str(user.uid)] * 4 and st["CapEff"] == "0" * 16
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
    # one supervisor per box; the namespace's socket maker (published ports) is titled apart
    assert len(_processes_of(user.uid, b"a3s_box.drivers.qemu.shim")) == 1
    (maker,) = _processes_of(user.uid, b"socket maker")
    assert len(os.listdir(f"/proc/{maker}/fd")) <= 4  # its pair and stdio: nothing of its parent's
    (qemu,) = [pid for pid in _processes_of_any(str(user.dir).encode()) if _is_qemu(pid)]
    # jailed: an id of its own from the user's subordinate range, not the user's
    start, count = _subordinate_range(user.name)
    st = _status(qemu)
    uids, gids = {int(u) for u in st["Uid"].split()}, {int(g) for g in st["Gid"].split()}
    assert len(uids) == 1 and start <= min(uids) < start + count, (st["Uid"], start, count)
    assert len(gids) == 1 and st["Groups"] == ""  # no supplementary group under TCG
    assert st["CapEff"] == st["CapPrm"] == st["CapBnd"] == "0" * 16 and st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2", st  # QEMU's -sandbox
    # in the box's user namespace: the user is root there, its subordinate range the rest
    assert os.readlink(f"/proc/{qemu}/ns/user") != os.readlink("/proc/self/ns/user")
    assert Path(f"/proc/{qemu}/uid_map").read_text().split() == ["0", str(user.uid), "1", "1", str(start), str(count)]
    for ns in ("net", "mnt", "ipc", "uts", "pid"):
        assert os.readlink(f"/proc/{qemu}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    assert st["NSpid"].split()[-1] == "1"  # init of its own PID namespace: it sees no other process
    parent = int(st["PPid"])  # what stands for it to the shim: a few pages of C, not Python
    assert os.readlink(f"/proc/{parent}/exe").endswith("a3s-shim-loop")
    assert Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")[1] == b"--pid1-parent"
    held = [os.readlink(f"/proc/{parent}/fd/{fd}") for fd in os.listdir(f"/proc/{parent}/fd") if int(fd) > 2]
    assert all(h.startswith("anon_inode:") for h in held), held  # its signalfd and pidfd: nothing of the shim's
    # its root is the jail's: the host's /etc, the user's home and other boxes are not there
    root = Path(f"/proc/{qemu}/root")
    assert not (root / "etc" / "passwd").exists() and not (root / "home").exists()
    assert not (root / str(user.dir).lstrip("/") / "Boxfile.yaml").exists()
    assert (root / "usr" / "bin").is_dir()


def _processes_of_any(needle: bytes) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and needle in (p / "cmdline").read_bytes():
                out.append(int(p.name))
        except OSError:
            continue
    return out


def _is_qemu(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"qemu-system-x86_64")
    except OSError:
        return False


def _subordinate_range(name: str) -> tuple[int, int]:
    for line in Path("/etc/subuid").read_text().splitlines():
        who, start, count = line.split(":")
        if who == name:
            return int(start), min(int(count), 65536)
    raise AssertionError(f"no subordinate range for {name}")


def test_strict_is_refused_naming_what_this_host_cannot_give_a_user(user: User) -> None:
    """This host's cgroups are v1, which cannot be delegated to a user: a strict box is
    refused, saying so, and nothing of it starts; `box doctor` says the same."""
    strict = user.dir / "Strict.yaml"
    strict.write_text(BOXFILE.split("boxes:")[0].format(image=user.dir / "image") + "boxes:\n  tight:\n"
                      "    image: tools\n    resources: {memory: 160Mi}\n")
    os.chown(strict, user.uid, user.uid)
    r = user.box("apply", "-f", "Strict.yaml")
    said = r.stdout + r.stderr
    assert r.returncode != 0 and "security: strict" in said and "cgroup" in said, said
    assert "Traceback" not in said and "uid:" not in said and "namespaces:" not in said, said  # those it has
    assert "tight" not in user.box("ps").stdout
    doctor = user.box("doctor").stdout
    assert "subordinate range" in doctor and "PID, IPC, UTS and network namespaces in the box's own user" in doctor, doctor


def test_another_user_cannot_read_the_users_boxes(user: User) -> None:
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "ls",
                        str(user.dir / "a3s" / "boxes")], capture_output=True, text=True)
    assert r.returncode != 0 and "Permission denied" in r.stderr


def test_another_user_cannot_reach_the_users_egress_daemon(user: User) -> None:
    run = user.dir / "a3s" / "run"
    packet = json.dumps({"v": wire.VERSION, "op": "register"}).encode()
    assert ask_as(run, wire.SOCKET_NAME, packet, uid=65534) == "refused by the socket's mode"
    assert json.loads(ask_as(run, wire.SOCKET_NAME, packet, uid=user.uid))["ok"] is False  # its user: answered
    # and root, whose boxes it does not serve, is not even answered
    assert ask_as(run, wire.SOCKET_NAME, packet, uid=0) == "closed unanswered"


def test_a_published_port_is_reachable_on_loopback(user: User) -> None:
    """A host connection on the box's published port: into the user's namespace through a
    socket its supervisor has made there by the namespace's own helper."""
    with socket.create_connection(("127.0.0.1", user.port), timeout=30) as c:
        c.sendall(b"GET /nsswitch.conf HTTP/1.0\r\n\r\n")
        c.settimeout(30)
        got = b""
        while chunk := c.recv(4096):
            got += chunk
    assert b" 200 " in got.split(b"\r\n")[0] and got.endswith(b"hosts: files dns\n"), got[:200]


def test_a_bind_volume_is_the_users_and_refuses_what_root_in_the_guest_tries(user: User) -> None:
    # the box is a snapshot clone, its share hot-plugged: what follows attacks that path
    ps = user.box("ps", "-o", "json")
    assert ps.returncode == 0 and json.loads(ps.stdout)[0]["boot"].startswith("snapshot "), ps.stdout + ps.stderr
    code, out = _sh(user, "echo from-guest > /work/made; mknod /work/disk b 8 0; echo mknod=$?; "
                          "chown 4242 /work/made; echo chown=$?; chmod u+s /work/made; echo suid=$?")
    assert "mknod=0" not in out and "chown=0" not in out and "suid=0" not in out, out
    made = user.dir / "work" / "made"
    assert made.read_text() == "from-guest\n"
    st = made.stat()
    assert (st.st_uid, st.st_gid) == (user.uid, user.uid) and not st.st_mode & 0o6000
    assert not (user.dir / "work" / "disk").exists()


def test_a_folder_of_another_user_is_not_shared_without_root(user: User, tmp_path: Path) -> None:
    theirs = Path(f"/tmp/a3s-rl-theirs-{os.getpid()}")
    theirs.mkdir(mode=0o755, exist_ok=True)  # root's, readable by all
    try:
        text = (user.dir / "Boxfile.yaml").read_text().replace("  net:\n", "  borrow:\n").replace(
            f"{user.dir / 'work'}:/work", f"{theirs}:/theirs").replace("boxes:\n", "project: borrow\nboxes:\n")
        (user.dir / "borrow.yaml").write_text(text)
        os.chown(user.dir / "borrow.yaml", user.uid, user.uid)
        r = user.box("apply", "-f", "borrow.yaml")
        assert r.returncode != 0 and f"{theirs} is uid 0's: without root" in r.stdout + r.stderr, r.stdout + r.stderr
        assert "Traceback" not in r.stderr
        user.box("delete", "-f", "borrow.yaml")
    finally:
        theirs.rmdir()


def test_two_users_run_boxes_of_one_name_side_by_side_each_alone_with_its_own(user: User, neighbour: User,
                                                                             internet: Internet) -> None:  # noqa: F811
    for u, other in ((user, neighbour), (neighbour, user)):
        r = u.box("ps", "-o", "json")
        assert r.returncode == 0 and [b["name"] for b in json.loads(r.stdout)] == ["net"], r.stdout + r.stderr
        # each one's secret goes with each one's requests
        code, out = _sh(u, f'/usr/bin/curl -sS -m 20 -H "Authorization: Bearer $TOKEN" '
                           f"https://api.test:{internet.https_port}/two-{u.name}")
        assert code == 0, out
        assert internet.last(f"/two-{u.name}")["headers"]["authorization"] == f"Bearer {u.env['A3S_TEST_TOKEN']}"
        # the other's home (state, disks, sockets, secrets' placeholders) is not even listable
        r = u.box("--home", str(other.dir / "a3s"), "ps")
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert u.run("ls", str(other.dir)).returncode != 0
    # one egress daemon each, each its own user's
    assert len(_processes_of(user.uid, b"a3s_box.network.daemon")) == 1
    assert len(_processes_of(neighbour.uid, b"a3s_box.network.daemon")) == 1
