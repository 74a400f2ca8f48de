"""The host-wide egress daemon with real namespaces, sockets and netfilter, no VM.

Each box here is what a supervisor makes: register_box() builds the box's namespace and
registers it with the daemon; curl run inside that namespace (nsenter) stands for the
guest behind QEMU's user-mode network. Attacked from the guests' side (one box reaching
for another's secret, names and CA), from the socket's (a client that is not root,
garbage, oversized packets) and by killing the daemon.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from a3s_box.network import registration, wire
from a3s_box.network.ca import ensure_ca
from a3s_box.network.log import read_lines
from a3s_box.network.netns import enter, missing_tools
from a3s_box.network.registration import BoxNetwork, EgressError, register_box
from tests.network.conftest import Internet
from tests.socket_peer import ask_as

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or bool(missing_tools()) or not shutil.which("nsenter") or not shutil.which("curl"),
    reason="needs root, ip, iptables-restore, nsenter and curl (a network namespace per box)")

ROOT = Path(__file__).resolve().parents[2]
VALUE_A, VALUE_B = "sk-value-of-box-a", "sk-value-of-box-b"
PH_A = "a3s-secret-token-aaaaaaaaaaaaaaaaaaaaaaaa"
PH_B = "a3s-secret-token-bbbbbbbbbbbbbbbbbbbbbbbb"


def curl_in(netns: int, *args: str) -> subprocess.CompletedProcess[str]:
    """curl inside the namespace NETNS (an fd), as a guest's traffic would leave it."""
    return subprocess.run(["nsenter", f"--net=/proc/{os.getpid()}/fd/{netns}", "curl", "-sS", "-m", "10", *args],
                          capture_output=True, text=True, timeout=30)


def in_namespace(netns: int, fn: Callable[[], Any]) -> Any:
    """FN in a thread of the namespace NETNS (the sockets it makes are the namespace's)."""
    out: list[Any] = []

    def run() -> None:
        try:
            enter(netns)
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out.append(e)
    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


@dataclass
class Box:
    name: str
    rundir: Path
    net: BoxNetwork
    https_port: int

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return curl_in(self.net.netns_fd, *args)

    def request(self, path: str, *headers: str, name: str = "api.test", ca: str | None = None
                ) -> subprocess.CompletedProcess[str]:
        """An HTTPS request from the box to NAME on the test internet, trusting CA (the
        box's own by default: what its guest's trust store holds)."""
        args = [a for h in headers for a in ("-H", h)]
        return self.curl("--cacert", ca or self.ca, *args, f"https://{name}:{self.https_port}{path}")

    @property
    def ca(self) -> str:
        return str(self.rundir / "ca.pem")

    def log(self) -> list[dict[str, Any]]:
        path = self.rundir / "net" / "network.log"
        return read_lines(path) if path.exists() else []

    def wait_for_log(self, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        for _ in range(200):
            found = [line for line in self.log() if pred(line)]
            if found:
                return found[-1]
            time.sleep(0.025)
        raise AssertionError(f"no such line in {self.name}'s network log: {json.dumps(self.log())}")


@dataclass
class Host:
    home: Path
    internet: Internet
    boxes: list[Box] = field(default_factory=list)
    daemons: set[int] = field(default_factory=set)

    def box(self, name: str, egress: list[str], secrets: dict[str, tuple[str, str]] | None = None,
            ports: list[str] | None = None, on_failure: Callable[[str], None] | None = None) -> Box:
        rundir = self.home / "boxes" / name
        rundir.mkdir(parents=True, mode=0o700)
        ca_dir = None
        if secrets is not None:  # {}: secrets that come later (update_secrets), the CA now
            ensure_ca(rundir, name)
            ca_dir = str(rundir)
        port = self.internet.https_port
        conf = {"box_id": name,
                "policy": {"mode": "allowlist", "egress": egress, "ports": ports or [],
                           "hosts": {"api.test": "127.0.0.1", "other.test": "127.0.0.1"}},
                "secrets": {k: {"placeholder": ph, "value": value, "hosts": [f"api.test:{port}"]}
                            for k, (ph, value) in (secrets or {}).items()},
                "forwards": [[i, 20000 + i] for i in range(len(ports or []))],
                "ca_dir": ca_dir, "logging": None}
        box = Box(name, rundir, register_box(self.home, rundir, conf, on_failure=on_failure), port)
        self.boxes.append(box)
        self.daemons.add(box.net.daemon_pid() or 0)
        return box

    def daemon_fds(self, pid: int) -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))


def _is_daemon(pid: int) -> bool:
    try:
        return b"a3s_box.network.daemon" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture()
def host(internet: Internet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    # The daemon inherits the starter's environment: the test internet's CA, a short idle.
    monkeypatch.setenv("SSL_CERT_FILE", str(internet.ca))
    monkeypatch.setenv("A3S_BOX_EGRESS_IDLE_EXIT", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    h = Host(home, internet)
    yield h
    for box in h.boxes:
        box.net.close()
    for pid in h.daemons:  # ours: they exit a second after their last box; no longer than 5
        for _ in range(100):
            if not _is_daemon(pid):
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"the egress daemon {pid} did not exit when idle")
    log = wire.run_dir(home) / wire.LOG_NAME
    assert "Traceback" not in (log.read_text() if log.exists() else "")


def test_two_boxes_are_each_served_under_their_own_policy_secret_and_ca(host: Host, internet: Internet) -> None:
    port = internet.https_port
    a = host.box("a", [f"api.test:{port}", f"other.test:{port}"], {"TOKEN": (PH_A, VALUE_A)})
    b = host.box("b", [f"api.test:{port}"], {"TOKEN": (PH_B, VALUE_B)})
    assert a.net.daemon_pid() == b.net.daemon_pid()  # one daemon serves both

    r = a.request("/from-a", f"Authorization: Bearer {PH_A}")
    assert r.returncode == 0, (r.stderr, a.log())
    assert internet.last("/from-a")["headers"]["authorization"] == f"Bearer {VALUE_A}"
    assert VALUE_A not in r.stdout and PH_A in r.stdout  # the echo came back scrubbed

    # B sends A's placeholder: B's book does not know it, so nothing replaces it
    r = b.request("/b-with-a", f"Authorization: Bearer {PH_A}", f"X-Own: {PH_B}")
    assert r.returncode == 0, (r.stderr, b.log())
    seen = internet.last("/b-with-a")["headers"]
    assert seen["authorization"] == f"Bearer {PH_A}" and seen["x-own"] == VALUE_B
    assert VALUE_A not in json.dumps(internet.requests[-1])

    # B's flows are intercepted with B's CA: A's does not verify B's leaf
    r = b.request("/b-with-a-ca", ca=a.ca)
    assert r.returncode != 0 and not any(q["path"] == "/b-with-a-ca" for q in internet.requests)

    # other.test: allowed for A, not for B
    assert a.request("/other", name="other.test", ca=str(internet.ca)).returncode == 0
    r = b.request("/other-from-b", name="other.test", ca=str(internet.ca))
    assert "Could not resolve host" in r.stderr
    # nor through the address A's DNS gave other.test: B's DNS never handed it out
    other_ip = a.wait_for_log(lambda x: x["proto"] == "dns" and x.get("dst") == "other.test"
                              and x["reason"].startswith("198.18."))["reason"]
    r = b.curl("--cacert", str(internet.ca), "--resolve", f"other.test:{port}:{other_ip}",
               f"https://other.test:{port}/other-by-address")
    assert r.returncode != 0
    assert b.wait_for_log(lambda x: x.get("dst") == f"{other_ip}:{port}")["reason"] == \
        "an address the box's DNS never handed out"
    assert not any(q["path"] in ("/other-from-b", "/other-by-address") for q in internet.requests)

    # each box's flows are in its own log, and only there
    a.wait_for_log(lambda x: x.get("dst") == f"other.test:{port}" and x["verdict"] == "allow")
    assert {x["box"] for x in a.log()} == {"a"} and {x["box"] for x in b.log()} == {"b"}
    assert not any(x.get("dst") == "other.test" for x in b.log() if x["verdict"] == "allow")
    assert not any(other_ip in str(x.get("dst")) for x in a.log() if x["proto"] == "tcp")
    for box in (a, b):  # the log and leaf keys are the daemon's uid's; the box's folder stays root's
        assert (box.rundir / "net" / "network.log").stat().st_uid == wire.DAEMON_UID
        assert (box.rundir / "net" / "leaves").stat().st_uid == wire.DAEMON_UID
        assert box.rundir.stat().st_uid == 0


def test_secrets_given_after_the_registration_apply_to_later_flows_and_survive_a_new_daemon(
        host: Host, internet: Internet) -> None:
    port = internet.https_port
    a = host.box("a", [f"api.test:{port}"], {})  # a pod's: its secrets come with its containers
    r = a.request("/before", f"Authorization: Bearer {PH_A}", ca=str(internet.ca))
    assert r.returncode == 0 and internet.last("/before")["headers"]["authorization"] == f"Bearer {PH_A}"
    a.net.update_secrets({"TOKEN": {"placeholder": PH_A, "value": VALUE_A, "hosts": [f"api.test:{port}"]}})
    r = a.request("/after", f"Authorization: Bearer {PH_A}")  # now intercepted, with the box's CA
    assert r.returncode == 0, (r.stderr, a.log())
    assert internet.last("/after")["headers"]["authorization"] == f"Bearer {VALUE_A}"
    assert VALUE_A not in r.stdout
    # the daemon killed: the box is registered again with the secrets it has now
    old = a.net.daemon_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while a.net.daemon_pid() in (old, None) and time.monotonic() < deadline:
        time.sleep(0.1)
    r = a.request("/again", f"Authorization: Bearer {PH_A}")
    assert r.returncode == 0, (r.stderr, a.log())
    assert internet.last("/again")["headers"]["authorization"] == f"Bearer {VALUE_A}"


def test_the_daemon_runs_without_root_and_holds_no_box_file_path(host: Host, internet: Internet) -> None:
    a = host.box("a", [f"api.test:{internet.https_port}"])
    pid = a.net.daemon_pid()
    assert pid is not None
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split() == [str(wire.DAEMON_UID)] * 4
    assert fields["CapEff"].strip() == fields["CapPrm"].strip() == fields["CapBnd"].strip() == "0" * 16
    assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2"
    # it cannot reach the box's folder by its path, only through the descriptor it was given
    assert (a.rundir / "net").stat().st_mode & 0o777 == 0o700 and stat.S_IMODE(a.rundir.stat().st_mode) == 0o700
    sock = wire.socket_path(host.home)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and sock.stat().st_uid == 0


def test_closing_a_registration_ends_that_box_only(host: Host, internet: Internet) -> None:
    port = internet.https_port
    a = host.box("a", [f"api.test:{port}"], {"TOKEN": (PH_A, VALUE_A)})
    pid = a.net.daemon_pid()
    assert pid is not None
    before = host.daemon_fds(pid)
    b = host.box("b", [f"api.test:{port}"], {"TOKEN": (PH_B, VALUE_B)})
    assert b.request("/b-before", f"Authorization: Bearer {PH_B}").returncode == 0
    ns = os.dup(b.net.netns_fd)  # the namespace outlives the registration, for the test
    try:
        b.net.close()
        for _ in range(100):
            r = curl_in(ns, "--cacert", b.ca, f"https://api.test:{port}/b-after")
            if r.returncode != 0:
                break
            time.sleep(0.05)
        assert r.returncode != 0 and not any(q["path"] == "/b-after" for q in internet.requests)
        # no proxy listens there any more: a raw connection is refused, not accepted and left hanging
        with pytest.raises(ConnectionRefusedError):
            in_namespace(ns, lambda: socket.create_connection(("198.18.0.2", port), 5).close())
    finally:
        os.close(ns)
    r = a.request("/a-still", f"Authorization: Bearer {PH_A}")
    assert r.returncode == 0 and internet.last("/a-still")["headers"]["authorization"] == f"Bearer {VALUE_A}"
    for _ in range(100):  # everything of B is closed in the daemon too
        if host.daemon_fds(pid) <= before:
            break
        time.sleep(0.05)
    assert host.daemon_fds(pid) <= before


def _raw_client(home: Path, *, uid: int = 0) -> str:
    """What a client of the daemon's socket gets for a registration, as UID."""
    said = ask_as(wire.run_dir(home), wire.SOCKET_NAME, b'{"v": 2, "op": "register"}', uid=uid)
    return said if said in ("refused by the socket's mode", "closed unanswered") else "answered"


def test_only_root_may_register_a_box(host: Host, internet: Internet) -> None:
    b = host.box("b", [f"api.test:{internet.https_port}"])
    assert _raw_client(host.home, uid=65534) == "refused by the socket's mode"
    assert _raw_client(host.home, uid=0) == "answered"  # a malformed registration: refused, answered
    # open the doors the mode keeps shut: SO_PEERCRED still keeps the client out
    run, sock = wire.run_dir(host.home), wire.socket_path(host.home)
    try:
        run.chmod(0o711)
        sock.chmod(0o666)
        assert _raw_client(host.home, uid=65534) == "closed unanswered"
    finally:
        sock.chmod(0o600)
        run.chmod(0o700)
    # B is served on, under its own policy
    assert "is not in the allow-list" in b.curl(f"http://api.test:{internet.http_port}/").stdout
    assert b.request("/b-after-intruders", ca=str(internet.ca)).returncode == 0


def _send_raw(home: Path, data: bytes, fds: list[int] | None = None) -> bytes | None:
    """DATA as one packet from a root client: the daemon's answer, None if it closed."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.setsockopt(socket.SOL_SOCKET, 32, 4 << 20)  # SO_SNDBUFFORCE: room for an oversized packet
        s.connect(str(wire.socket_path(home)))
        if fds:
            socket.send_fds(s, [data], fds)
        else:
            s.send(data)
        s.settimeout(10)
        return s.recv(4096) or None
    finally:
        s.close()


def test_garbage_and_oversized_messages_close_only_their_client(host: Host, internet: Internet) -> None:
    port = internet.https_port
    b = host.box("b", [f"api.test:{port}"], {"TOKEN": (PH_B, VALUE_B)})
    pid = b.net.daemon_pid()
    assert pid is not None
    before = host.daemon_fds(pid)
    assert _send_raw(host.home, b"\x00\xffgarbage") is None
    assert _send_raw(host.home, b"{" + b" " * (wire.MAX_MESSAGE + 10) + b"}") is None
    said = _send_raw(host.home, b'{"v": 2, "op": "register", "box_id": "x", "policy": {}, "published": []}')
    assert said is not None and "0 descriptors" in json.loads(said)["error"]
    # descriptors beyond those expected, and ones that are not what they say, are closed
    files = [os.open("/dev/null", os.O_RDONLY) for _ in range(6)]
    try:
        reg = wire.Registration("x", {"mode": "allowlist"}, {}, None, (), None, None).message()
        said = _send_raw(host.home, wire.encode(reg), files)
        assert said is not None and "6 descriptors with a registration that needs 4" in json.loads(said)["error"]
        said = _send_raw(host.home, wire.encode(reg), files[:4])
        assert said is not None and "the TCP listener: not a socket" in json.loads(said)["error"]
    finally:
        for fd in files:
            os.close(fd)
    time.sleep(0.2)
    assert host.daemon_fds(pid) == before
    assert b.net.alive() and b.net.daemon_pid() == pid
    r = b.request("/b-after-garbage", f"Authorization: Bearer {PH_B}")
    assert r.returncode == 0 and internet.last("/b-after-garbage")["headers"]["authorization"] == f"Bearer {VALUE_B}"


def test_a_killed_daemon_is_replaced_and_its_boxes_registered_again(host: Host, internet: Internet) -> None:
    port = internet.https_port
    failures: list[str] = []
    a = host.box("a", [f"api.test:{port}"], {"TOKEN": (PH_A, VALUE_A)}, on_failure=failures.append)
    b = host.box("b", [f"api.test:{port}"], {"TOKEN": (PH_B, VALUE_B)}, on_failure=failures.append)
    old = a.net.daemon_pid()
    assert old is not None and _is_daemon(old)
    os.kill(old, signal.SIGKILL)
    for _ in range(200):
        if a.net.daemon_pid() not in (None, old) and b.net.daemon_pid() not in (None, old):
            break
        time.sleep(0.05)
    new = b.net.daemon_pid()
    assert new not in (None, old) and a.net.daemon_pid() == new and new is not None
    host.daemons.add(new)
    r = b.request("/b-again", f"Authorization: Bearer {PH_B}")
    assert r.returncode == 0, (r.stderr, b.log())
    assert internet.last("/b-again")["headers"]["authorization"] == f"Bearer {VALUE_B}"
    assert a.request("/a-again", f"Authorization: Bearer {PH_A}").returncode == 0
    assert internet.last("/a-again")["headers"]["authorization"] == f"Bearer {VALUE_A}"
    assert a.net.alive() and b.net.alive() and failures == []


def test_a_box_that_cannot_be_registered_again_says_so(host: Host, internet: Internet,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    failures: list[str] = []
    a = host.box("a", [f"api.test:{internet.https_port}"], on_failure=failures.append)
    monkeypatch.setattr(registration, "RETRIES", (0.0, 0.1))
    run = wire.run_dir(host.home)
    os.chown(run, 65534, 65534)  # no daemon can be started here now
    try:
        pid = a.net.daemon_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(200):
            if failures:
                break
            time.sleep(0.05)
        assert not a.net.alive() and failures == [a.net.failure]
        assert "could not be registered again" in a.net.failure and "belongs to uid 65534" in a.net.failure
    finally:
        os.chown(run, 0, 0)


def test_a_published_port_reaches_its_own_box(host: Host, internet: Internet) -> None:
    free, free_b = _free_port(), _free_port()
    a = host.box("a", [], ports=[f"127.0.0.1:{free}:8080"])
    b = host.box("b", [], ports=[f"127.0.0.1:{free_b}:8080"])
    pid = a.net.daemon_pid()
    assert pid is not None
    fds = host.daemon_fds(pid)
    with socket.create_connection(("127.0.0.1", free_b), 5) as c:  # nothing listens in B yet: closed
        c.settimeout(5)
        assert c.recv(100) == b""

    def serve(name: str) -> socket.socket:  # what QEMU's hostfwd listens on, in the box's namespace
        s = socket.create_server(("127.0.0.1", 20000))
        threading.Thread(target=lambda: _answer_once(s, name.encode()), daemon=True).start()
        return s
    inner_a = in_namespace(a.net.netns_fd, lambda: serve("a"))
    inner_b = in_namespace(b.net.netns_fd, lambda: serve("b"))
    try:
        with socket.create_connection(("127.0.0.1", free), 5) as c:
            c.sendall(b"hello")
            c.settimeout(5)
            assert c.recv(100) == b"a:hello"
    finally:
        inner_a.close()
        inner_b.close()
    time.sleep(0.2)
    assert host.daemon_fds(pid) == fds  # the relays and their sockets are gone
    with pytest.raises(EgressError, match="cannot publish"):  # the port is A's
        host.box("c", [], ports=[f"127.0.0.1:{free}:8080"])
    # A's supervisor connects into A's namespace only to A's published ports, whoever asks
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        a.net._answer(ours, wire.connect_request(7, 22))
        assert json.loads(theirs.recv(4096)) == wire.connected(7, "port 22 is not published")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answer_once(server: socket.socket, name: bytes) -> None:
    try:
        conn, _ = server.accept()
    except OSError:
        return
    with conn:
        conn.sendall(name + b":" + conn.recv(100))


def test_the_daemon_exits_when_no_box_is_left(host: Host, internet: Internet) -> None:
    a = host.box("a", [f"api.test:{internet.https_port}"])
    pid = a.net.daemon_pid()
    assert pid is not None
    time.sleep(2.5)  # over the idle time (1 s here), with a box: serving on
    assert _is_daemon(pid) and a.curl(f"http://other.test:{internet.http_port}/").returncode != 0
    a.net.close()
    for _ in range(100):
        if not _is_daemon(pid):
            break
        time.sleep(0.05)
    assert not _is_daemon(pid)
    b = host.box("b", [f"api.test:{internet.https_port}"])  # the next box starts the next daemon
    assert b.net.daemon_pid() not in (None, pid)


def test_closing_a_box_ends_its_open_flows_relayed_and_intercepted(host: Host, internet: Internet) -> None:
    """A box's end ends its flows in the daemon, the HTTP flow's thread included (its
    upstream connection too), and nothing of it is written after: the daemon closes the
    box's folder descriptor next, and that number may be another box's soon."""
    port = internet.https_port
    b = host.box("b", [f"api.test:{port}"])  # keeps the daemon serving
    pid = b.net.daemon_pid()
    assert pid is not None
    fds, threads = host.daemon_fds(pid), len(os.listdir(f"/proc/{pid}/task"))
    a = host.box("a", [f"api.test:{port}", f"other.test:{port}"], {"TOKEN": (PH_A, VALUE_A)})
    ns = os.dup(a.net.netns_fd)
    slow = ["--limit-rate", "50k", "-o", "/dev/null", "-m", "60"]
    nsenter = ["nsenter", f"--net=/proc/{os.getpid()}/fd/{ns}", "curl", "-sS"]
    flows = [subprocess.Popen([*nsenter, *slow, "--cacert", a.ca, f"https://api.test:{port}/big/100000000"],
                              pass_fds=(ns,), stderr=subprocess.DEVNULL),  # intercepted: in a thread
             subprocess.Popen([*nsenter, *slow, "--cacert", str(internet.ca),
                               f"https://other.test:{port}/big/100000000"],  # relayed on the loop
                              pass_fds=(ns,), stderr=subprocess.DEVNULL)]
    try:
        time.sleep(1.5)
        assert all(f.poll() is None for f in flows)
        assert host.daemon_fds(pid) >= fds + 5 + 2 * 2 and len(os.listdir(f"/proc/{pid}/task")) > threads
        a.net.close()
        for _ in range(100):
            if host.daemon_fds(pid) == fds and len(os.listdir(f"/proc/{pid}/task")) == threads:
                break
            time.sleep(0.05)
        # the daemon holds nothing of A's any more: no socket, no thread (what the kernel
        # had buffered for the box's side drains on its own)
        assert (host.daemon_fds(pid), len(os.listdir(f"/proc/{pid}/task"))) == (fds, threads)
    finally:
        for f in flows:
            f.kill()
            f.wait()
        os.close(ns)
    size = (a.rundir / "net" / "network.log").stat().st_size
    time.sleep(1.0)
    assert (a.rundir / "net" / "network.log").stat().st_size == size
    assert b.request("/b-still", ca=str(internet.ca)).returncode == 0
