"""The shim's steady state (a3s-shim-loop, C) between a guest the test plays and real
clients: its routing rules, its exit report, its console log.

Faked: QEMU. The shim runs a stand-in VMM (FAKE_VMM) that connects to the channel as
QEMU would and relays the bytes to a socket of the test's, so the test speaks the guest's
side of the protocol frame by frame; everything else (the Python shim's setup, the exec,
the C loop, the clients' sockets) is the real thing.

Every test runs twice: against the loop as shipped (static, musl) and against the same
sources built with AddressSanitizer and UndefinedBehaviorSanitizer (glibc's gcc: musl
has no sanitizer runtime). The loop parses what a hostile guest sends, as root outside
the jail: an out-of-bounds read or write, a use after free or an overflow there fails the
test that provoked it with the sanitizer's report, where the shipped build might only
misbehave later.
"""
from __future__ import annotations

import array
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from a3s_box.drivers.qemu.shim_loop import SOURCES, build_shim_loop
from a3s_box.guest import protocol as p
from a3s_box.guest.protocol import CONTROL_REQUESTS, Frame, FrameReader, MsgType
from a3s_box.network import wire
from tests import csanitize
from tests.csanitize import SANITIZED, sanitizer_env, sanitizer_reports

ROOT = str(Path(__file__).resolve().parents[2])
GUEST_HELLO = p.Writer().u16(1).str("kernel=6.1\ntransport=fake").bytes()
KILL = p.Writer().u32(int(signal.SIGKILL)).bytes()

FAKE_VMM = r'''
import os, select, socket, sys
chan = socket.socket(socket.AF_UNIX); chan.connect(sys.argv[1])
ctl = socket.socket(socket.AF_UNIX); ctl.connect(sys.argv[2])
console = None
if sys.argv[4] != "-":
    console = socket.socket(socket.AF_UNIX); console.connect(sys.argv[4])
    console.sendall(b"booting\nhalf a line")
ctl.sendall(f"{os.getpid()}\n".encode())
while True:
    ready, _, _ = select.select([chan, ctl], [], [])
    for src, dst in ((chan, ctl), (ctl, chan)):
        if src in ready:
            data = src.recv(65536)
            if not data:
                if console is not None:
                    console.sendall(b" ends\nlast words\n")
                sys.exit(int(sys.argv[3]))
            dst.sendall(data)
'''


class Peer:
    """One end of a connection to the shim, speaking frames."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader()
        self.pending: list[Frame] = []

    def send(self, type_: int, stream: int, payload: bytes = b"") -> None:
        self.sock.sendall(p.encode(type_, stream, payload))

    def next(self, timeout: float = 10.0) -> Frame:
        self.sock.settimeout(timeout)
        while not self.pending:
            data = self.sock.recv(65536)
            assert data, "the shim hung up"
            self.pending += self.reader.feed(data)
        return self.pending.pop(0)


class Guest(Peer):
    """The test's side of the channel (after the stand-in VMM says its pid)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        pid = b""
        while not pid.endswith(b"\n"):
            pid += sock.recv(1)
        self.vmm_pid = int(pid)

    def next_not_hello(self) -> Frame:
        while True:  # the shim repeats HELLO until the guest answers
            f = self.next()
            if f.type != MsgType.HELLO:
                return f


class Client(Peer):
    def __init__(self, path: Path) -> None:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(path))
        super().__init__(sock)

    def nothing(self, wait: float = 0.3) -> bool:
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        self.pending += self.reader.feed(data)
        return False

    def close(self) -> None:
        self.sock.close()


def build_sanitized(folder: Path) -> Path:
    return csanitize.build_sanitized(SOURCES, folder, "a3s-shim-loop")


@pytest.fixture(scope="module", params=["musl", SANITIZED])
def loop_binary(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param == SANITIZED:
        return build_sanitized(tmp_path_factory.mktemp("asan"))
    return build_shim_loop(tmp_path_factory.mktemp("cache"))


class Running:
    def __init__(self, rundir: Path, shim: subprocess.Popen[bytes], guest: Guest) -> None:
        self.rundir, self.shim, self.guest = rundir, shim, guest
        self.clients: list[Client] = []
        self.sanitizer_log = rundir.parent / "sanitizer"
        self.sanitized = os.readlink(f"/proc/{shim.pid}/exe").split("/")[-2] == SANITIZED

    def client(self) -> Client:
        self.clients.append(Client(self.rundir / "guest.sock"))
        return self.clients[-1]

    def close(self) -> None:
        if self.shim.poll() is None:
            self.shim.kill()
        self.shim.wait()
        for c in self.clients:
            c.close()
        self.guest.sock.close()
        reports = sanitizer_reports(self.sanitizer_log, self.rundir / "shim.log")
        assert not reports, reports

    def exit_record(self, timeout: float = 20.0) -> dict[str, object]:
        self.shim.wait(timeout)
        return dict(json.loads((self.rundir / "exit.json").read_text()))


def start(tmp_path: Path, loop_binary: Path, code: int = 0, console: bool = False) -> Running:
    rundir = tmp_path / "box.box"
    rundir.mkdir()
    fake = tmp_path / "fake_vmm.py"
    fake.write_text(FAKE_VMM)
    ctl_path = tmp_path / "ctl.sock"
    ctl = socket.socket(socket.AF_UNIX)
    ctl.bind(str(ctl_path))
    ctl.listen(1)
    ctl.settimeout(30)
    console_sock = rundir / "console.sock"
    (rundir / "launch.json").write_text(json.dumps({
        "box_id": "box.box", "loop": str(loop_binary),
        "argv": [sys.executable, str(fake), str(rundir / "channel.sock"), str(ctl_path), str(code),
                 str(console_sock) if console else "-"],
        "channel": str(rundir / "channel.sock"), "guest_socket": str(rundir / "guest.sock"),
        "console": str(rundir / "console.log"), "console_socket": str(console_sock) if console else None,
        "jail": None, "logging": {"max_size": 1 << 20, "max_files": 2}}))
    with open(rundir / "shim.log", "wb") as log:
        shim = subprocess.Popen([sys.executable, "-m", "a3s_box.drivers.qemu.shim", str(rundir)],
                                stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": ROOT, **sanitizer_env(tmp_path / "sanitizer")})
    conn, _ = ctl.accept()
    ctl.close()
    guest = Guest(conn)
    assert guest.next().type == MsgType.HELLO  # the shim's, until the guest answers
    guest.send(MsgType.HELLO, 0, GUEST_HELLO)
    deadline = time.monotonic() + 20
    while not (rundir / "guest.sock").exists():
        assert time.monotonic() < deadline and shim.poll() is None, (rundir / "shim.log").read_text()
        time.sleep(0.02)
    return Running(rundir, shim, guest)


@pytest.fixture
def running(tmp_path: Path, loop_binary: Path) -> Iterator[Running]:
    r = start(tmp_path, loop_binary)
    yield r
    r.close()


def test_the_shim_becomes_the_small_loop_and_keeps_its_title(running: Running) -> None:
    pid = running.shim.pid
    assert os.readlink(f"/proc/{pid}/exe").endswith("a3s-shim-loop")
    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    assert title == f"a3s_box.drivers.qemu.shim {running.rundir}".encode()
    # QEMU (the stand-in) is still its child
    assert Path(f"/proc/{running.guest.vmm_pid}/stat").read_text().split(")")[1].split()[1] == str(pid)
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    if running.sanitized:
        return  # the sanitizers' shadow memory is most of that build's size
    assert rss < 2048, rss  # KiB: a few pages, not an interpreter


def test_hello_is_answered_by_the_shim_from_what_the_guest_said(running: Running) -> None:
    c = running.client()
    c.send(MsgType.HELLO, 0, p.Writer().u16(1).bytes())
    f = c.next()
    assert (f.type, f.stream, f.payload) == (MsgType.HELLO, 0, GUEST_HELLO)


def _exec(c: Client, guest: Guest, stream: int) -> int:
    c.send(MsgType.EXEC, stream, b"req")
    f = guest.next_not_hello()
    assert (f.type, f.payload) == (MsgType.EXEC, b"req")
    return f.stream


def test_same_stream_ids_from_two_clients_get_distinct_guest_ids(running: Running) -> None:
    g = running.guest
    a, b = running.client(), running.client()
    ga, gb = _exec(a, g, 1), _exec(b, g, 1)
    assert ga != gb and 0 not in (ga, gb)
    b.send(MsgType.STDIN, 1, b"x")
    f = g.next()
    assert (f.type, f.stream, f.payload) == (MsgType.STDIN, gb, b"x")
    g.send(MsgType.STDOUT, gb, b"out-b")
    f = b.next()
    assert (f.type, f.stream, f.payload) == (MsgType.STDOUT, 1, b"out-b")
    g.send(MsgType.EXIT, ga, b"e")
    f = a.next()
    assert (f.type, f.stream, f.payload) == (MsgType.EXIT, 1, b"e")
    # after EXIT the session is gone: late frames either way go nowhere
    g.send(MsgType.STDOUT, ga, b"late")
    a.send(MsgType.SIGNAL, 1, KILL)
    assert a.nothing() and b.nothing()
    b.send(MsgType.STDIN, 1, b"still b's")
    f = g.next()
    assert (f.type, f.stream, f.payload) == (MsgType.STDIN, gb, b"still b's")  # not a's SIGNAL


def test_stream0_replies_go_to_whoever_asked_in_order(running: Running) -> None:
    g = running.guest
    a, b = running.client(), running.client()
    a.send(MsgType.CONFIG, 0, b"cfg")
    assert g.next_not_hello().type == MsgType.CONFIG
    b.send(MsgType.SHUTDOWN, 0, b"\0")
    assert g.next().type == MsgType.SHUTDOWN
    g.send(MsgType.RESULT, 0, b"r1")
    g.send(MsgType.RESULT, 0, b"r2")
    g.send(MsgType.RESULT, 0, b"unasked")
    assert a.next().payload == b"r1" and b.next().payload == b"r2"
    assert a.nothing() and b.nothing()


@pytest.mark.parametrize("request_type", sorted(CONTROL_REQUESTS))
def test_every_control_request_gets_its_answer(running: Running, request_type: MsgType) -> None:
    """The loop routes stream-0 answers by its own list of requests: one the protocol
    gained and the loop lacks would go unanswered (TRUST did, until this test)."""
    c = running.client()
    c.send(request_type, 0, b"request")
    assert running.guest.next_not_hello().type == request_type
    running.guest.send(MsgType.PONG if request_type == MsgType.PING else MsgType.RESULT, 0, b"answer")
    assert c.next().payload == b"answer"


@pytest.mark.parametrize("child, signal_sent, ends", [
    ("sleep 0.3; exit 7", None, 7),
    ("sleep 100", signal.SIGTERM, -signal.SIGTERM),  # forwarded to the child, then mirrored
    ("sleep 0.3; kill -KILL $$", None, -signal.SIGKILL),
])
def test_the_pid1_parent_ends_as_its_child_did(tmp_path: Path, loop_binary: Path, child: str,
                                                signal_sent: signal.Signals | None, ends: int) -> None:
    """`--pid1-parent PID` stands where a rootless box's VMM would (its child, init of a
    PID namespace): what the shim sees of it must be what the VMM did."""
    # sh's child outlives sh's exec into the loop, which stays its parent
    proc = subprocess.Popen(["sh", "-c", f'sh -c "{child}" & exec {loop_binary} --pid1-parent $!'],
                            env={**os.environ, **sanitizer_env(tmp_path / "sanitizer")})
    if signal_sent is not None:
        time.sleep(0.3)  # the loop has its signalfd (a signal before is forwarded the same way)
        proc.send_signal(signal_sent)
    assert proc.wait(timeout=30) == ends
    assert sanitizer_reports(tmp_path / "sanitizer", tmp_path / "no-stderr") == ""


def test_a_departed_client_has_its_sessions_killed_and_its_replies_dropped(running: Running) -> None:
    g = running.guest
    one, two = running.client(), running.client()
    g1, g2 = _exec(one, g, 1), _exec(one, g, 5)
    other = _exec(two, g, 1)
    one.send(MsgType.CONFIG, 0, b"cfg")
    assert g.next().type == MsgType.CONFIG
    two.send(MsgType.PING, 0, b"p")
    assert g.next().type == MsgType.PING
    one.close()
    kills = [g.next(), g.next()]
    assert [(f.type, f.stream, f.payload) for f in kills] == [(MsgType.SIGNAL, g1, KILL), (MsgType.SIGNAL, g2, KILL)]
    g.send(MsgType.STDOUT, g1, b"x")
    g.send(MsgType.RESULT, 0, b"for-1")  # client one's CONFIG reply: nobody's now
    g.send(MsgType.PONG, 0, b"p")
    f = two.next()
    assert (f.type, f.payload) == (MsgType.PONG, b"p")
    g.send(MsgType.STDOUT, other, b"y")
    f = two.next()
    assert (f.type, f.stream, f.payload) == (MsgType.STDOUT, 1, b"y")


def test_a_client_breaking_the_protocol_loses_only_itself(running: Running) -> None:
    g = running.guest
    bad, good = running.client(), running.client()
    gid = _exec(bad, g, 3)
    bad.sock.sendall(b"\x00not a frame" * 10)
    f = g.next()
    assert (f.type, f.stream) == (MsgType.SIGNAL, gid)  # what it started is killed
    with pytest.raises((AssertionError, ConnectionResetError)):
        bad.next(5)  # hung up on
    good.send(MsgType.HELLO, 0)
    assert good.next().type == MsgType.HELLO


def test_a_guest_breaking_the_protocol_ends_the_sessions_and_says_so(tmp_path: Path, loop_binary: Path) -> None:
    r = start(tmp_path, loop_binary, console=True)
    try:
        c = r.client()
        gid = _exec(c, r.guest, 9)
        r.guest.sock.sendall(b"\x00garbage" * 100)
        f = c.next()
        assert (f.type, f.stream) == (MsgType.ERROR, 9)
        assert p.Reader(f.payload).i32() == 71 and b"the guest broke the protocol (bad magic)" in f.payload
        f = r.guest.next()
        assert (f.type, f.stream, f.payload) == (MsgType.SIGNAL, gid, KILL)
        r.guest.send(MsgType.STDOUT, gid, b"after")  # the stream resynchronised: still nobody's
        c.send(MsgType.HELLO, 0)
        assert c.next().type == MsgType.HELLO
        console = (r.rundir / "console.log").read_text()
        assert "a3s-box: the guest sent 1 malformed frame(s) (bad magic); its sessions were ended" in console
        # the console's own lines, stamped; the broken line starts a line of its own
        assert "Z booting\n" in console and "Z half a line\n" in console
    finally:
        r.close()


@pytest.mark.parametrize("code, how, reason, signo", [
    (0, None, "the guest powered off", 0),
    (3, None, "qemu exited with status 3 (see shim.log and console.log)", 0),
    (0, signal.SIGKILL, "qemu was killed by SIGKILL", 9),
    # QEMU ends on SIGTERM; the stand-in dies of it
    (0, "stop", "qemu was killed by SIGTERM while stopping (SIGTERM to the shim)", 15),
])
def test_exit_reasons(tmp_path: Path, loop_binary: Path, request: pytest.FixtureRequest,
                      code: int, how: object, reason: str, signo: int) -> None:
    r = start(tmp_path, loop_binary, code=code, console=True)
    request.addfinalizer(r.close)
    if how is None:
        r.guest.sock.close()  # the stand-in exits with CODE, as a guest powering off
    elif how == "stop":
        os.kill(r.shim.pid, signal.SIGTERM)
    else:
        os.kill(r.guest.vmm_pid, int(how))  # type: ignore[call-overload]
    record = r.exit_record()
    assert record["reason"] == reason
    assert record["signal"] == signo
    assert not (r.rundir / "guest.sock").exists() and not (r.rundir / "channel.sock").exists()
    log = (r.rundir / "console.log").read_text()
    if how is None:
        assert "Z  ends\n" in log or "half a line ends\n" in log  # written before it exited
        assert "last words" in log


TYPES = [int(t) for t in MsgType] + [0, 0x55]
client_frame = st.tuples(st.sampled_from(TYPES), st.integers(0, 4), st.binary(max_size=12))
guest_frame = st.tuples(st.sampled_from(TYPES), st.integers(0, 12), st.binary(max_size=12))
event = st.one_of(st.tuples(st.just("client"), st.integers(0, 2), client_frame),
                  st.tuples(st.just("guest"), st.just(0), guest_frame),
                  st.tuples(st.just("drop"), st.integers(0, 2), st.none()))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(event, min_size=1, max_size=40))
def test_whatever_clients_and_guest_send_a_client_hears_only_of_its_own_sessions(
        tmp_path_factory: pytest.TempPathFactory, loop_binary: Path,
        events: list[tuple[str, int, tuple[int, int, bytes] | None]]) -> None:
    r = start(tmp_path_factory.mktemp("fuzz"), loop_binary)
    try:
        clients: dict[int, Client] = {}
        opened: dict[int, set[int]] = {}
        for kind, cid, frame in events:
            if kind == "drop":
                if cid in clients:
                    clients.pop(cid).close()
                continue
            assert frame is not None
            type_, stream, payload = frame
            if kind == "guest":
                r.guest.send(type_, stream, payload)
                continue
            if cid not in clients:
                clients[cid] = Client(r.rundir / "guest.sock")
                r.clients.append(clients[cid])
                opened[cid] = set()
            clients[cid].send(type_, stream, payload)
            if stream and type_ in (MsgType.EXEC, MsgType.PUT, MsgType.GET, MsgType.STATUS, MsgType.PING):
                opened[cid].add(stream)
        probe = r.client()
        probe.send(MsgType.HELLO, 0)
        assert probe.next().type == MsgType.HELLO  # still serving
        for cid, c in clients.items():
            c.nothing(0.2)
            for f in c.pending:
                assert f.stream == 0 or f.stream in opened[cid], (cid, f)
        assert r.shim.poll() is None
    finally:
        r.close()


def _header(length: int, type_: int, stream: int) -> bytes:
    return p.MAGIC + length.to_bytes(4, "big") + bytes([type_]) + stream.to_bytes(4, "big")


# bytes as a hostile peer might send them: whole frames, headers whose length is a lie
# (0, under the minimum, the most, over it, huge), cut frames, noise and bare magic
raw_chunk = st.one_of(
    st.builds(p.encode, st.sampled_from(TYPES), st.integers(0, 2**32 - 1), st.binary(max_size=64)),
    st.builds(lambda n, t, sid, tail: _header(n, t, sid) + tail,
              st.sampled_from([0, 1, 4, 5, p.MAX_LENGTH, p.MAX_LENGTH + 1, 2**31, 2**32 - 1]),
              st.sampled_from(TYPES), st.integers(0, 8), st.binary(max_size=32)),
    st.builds(lambda f, cut: f[:cut], st.builds(p.encode, st.sampled_from(TYPES), st.integers(0, 8),
                                               st.binary(max_size=40)), st.integers(0, 50)),
    st.binary(min_size=1, max_size=48),
    st.just(p.MAGIC))
raw_event = st.tuples(st.sampled_from(["guest", "client0", "client1"]), st.lists(raw_chunk, min_size=1, max_size=6))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(raw_event, min_size=1, max_size=12))
def test_raw_bytes_from_guest_and_clients_never_take_the_loop_down(
        tmp_path_factory: pytest.TempPathFactory, loop_binary: Path,
        events: list[tuple[str, list[bytes]]]) -> None:
    """Byte streams, not frames: lying lengths, frames cut anywhere, noise. The loop
    drops a client that breaks the protocol and resynchronises on a guest that does;
    it keeps serving, and (the sanitized build) never reads or writes out of bounds."""
    r = start(tmp_path_factory.mktemp("raw"), loop_binary)
    try:
        clients: dict[str, Client] = {}
        for who, chunks in events:
            data = b"".join(chunks)
            if who == "guest":
                r.guest.sock.sendall(data)
                continue
            if who not in clients:
                clients[who] = r.client()
            try:
                clients[who].sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                clients[who] = r.client()  # hung up on for breaking the protocol: a new one
        r.guest.sock.sendall(b"\0" * p.MAX_LENGTH)  # ends whatever frame the guest left open
        probe = r.client()
        probe.send(MsgType.HELLO, 0)
        assert probe.next(20).type == MsgType.HELLO  # still serving
        assert r.shim.poll() is None
    finally:
        r.close()


# --- a registration held by descriptors (a3s_box/network/keeper.py) ----------------------
# Faked: the egress daemon's connection (a socket of the test's) and the Python that
# registers the box again (STAND_IN: it answers as keeper.py's register_again would).
LAUNCHER = r'''
import json, os, socket, subprocess, sys
a = json.loads(sys.argv[1])
vmm = subprocess.Popen(a["vmm"])
chan = socket.socket(socket.AF_UNIX); chan.bind(a["channel"]); chan.listen(1)
daemon = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); daemon.connect(a["daemon"])
held = [daemon.fileno()] + [os.open("/dev/null", os.O_RDONLY) for _ in range(6)]
if a.get("netns"):
    held[2] = os.open(a["netns"], os.O_RDONLY)
published = []
for port in a.get("published", []):
    listener = socket.create_server(("127.0.0.1", 0))
    published.append((port, listener.detach()))
for fd in [chan.fileno()] + held + [fd for _, fd in published]:
    os.set_inheritable(fd, True)
os.execv(a["loop"], [f"a3s_box.drivers.qemu.shim {a['rundir']}", f"--rundir={a['rundir']}", "--box=held.box",
         f"--qemu={vmm.pid}", f"--channel={chan.fileno()}", f"--channel-path={a['channel']}",
         f"--guest-path={a['rundir']}/guest.sock", f"--registration={','.join(map(str, held))}",
         *[f"--published={port}:{fd}" for port, fd in published],
         f"--python={a['python']}", f"--home={a['home']}"])
'''
STAND_IN = r'''#!{python}
import array, os, socket, sys
fds = ",".join(str(fd) for fd in range(3, 20) if os.path.exists(f"/proc/self/fd/{{fd}}"))
open(sys.argv[0] + ".args", "a").write(" ".join(sys.argv[1:]) + " fds:" + fds + "\n")
answer = socket.socket(fileno=3)
if os.path.exists(sys.argv[0] + ".refuse"):
    answer.send(b"error: the egress daemon ended and the box could not be registered again: the test says no")
    sys.exit(1)
new = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); new.connect(sys.argv[0] + ".daemon")
answer.sendmsg([b"ok"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [new.fileno()]))])
'''


class HeldLoop:
    """The loop exec'd by LAUNCHER with a registration held by descriptors: the test's
    stand-in daemon (its first connection, then the one the stand-in Python makes when
    the loop registers the box again) and the stand-in VMM's guest end. LAUNCH: more of
    LAUNCHER's arguments (a network namespace, published ports)."""

    def __init__(self, tmp_path: Path, loop_binary: Path, **launch: object) -> None:
        self.tmp, self.rundir = tmp_path, tmp_path / "held.box"
        self.rundir.mkdir()
        self.stand_in = tmp_path / "python"
        self.stand_in.write_text(STAND_IN.format(python=sys.executable))
        self.stand_in.chmod(0o755)
        self.daemons = []
        for path in (tmp_path / "daemon.sock", Path(f"{self.stand_in}.daemon")):
            d = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            d.bind(str(path))
            d.listen(4)
            d.settimeout(30)
            self.daemons.append(d)
        fake = tmp_path / "fake_vmm.py"
        fake.write_text(FAKE_VMM)
        self.ctl = socket.socket(socket.AF_UNIX)
        self.ctl.bind(str(tmp_path / "ctl.sock"))
        self.ctl.listen(1)
        self.ctl.settimeout(30)
        args = {"vmm": [sys.executable, str(fake), str(self.rundir / "channel.sock"), str(tmp_path / "ctl.sock"),
                        "0", "-"],
                "channel": str(self.rundir / "channel.sock"), "daemon": str(tmp_path / "daemon.sock"),
                "loop": str(loop_binary), "rundir": str(self.rundir), "python": str(self.stand_in),
                "home": str(tmp_path), **launch}
        with open(self.rundir / "shim.log", "wb") as log:
            self.shim = subprocess.Popen([sys.executable, "-c", LAUNCHER, json.dumps(args)], stderr=log)
        self.first, _ = self.daemons[0].accept()
        self.first.settimeout(30)
        conn, _ = self.ctl.accept()
        self.guest = Guest(conn)

    def helper_args(self) -> list[str]:
        """What the stand-in Python was run with, and the descriptors it had."""
        return Path(f"{self.stand_in}.args").read_text().split()

    def close(self) -> None:
        if self.shim.poll() is None:
            self.shim.kill()
            self.shim.wait()
        self.guest.sock.close()
        self.ctl.close()
        for d in self.daemons:
            d.close()
        reports = sanitizer_reports(self.tmp / "sanitizer", self.rundir / "shim.log")
        assert not reports, reports


def test_a_held_registration_is_made_again_when_the_daemon_goes_and_the_vm_stops_when_it_cannot(
        tmp_path: Path, loop_binary: Path) -> None:
    held = HeldLoop(tmp_path, loop_binary)
    try:
        held.first.close()  # the daemon was killed: the loop has the box registered again
        second, _ = held.daemons[1].accept()
        said = held.helper_args()
        assert said[:4] == ["-m", "a3s_box.network.keeper", str(tmp_path), str(held.rundir)]
        assert said[4] == "fds:3,4,5,6,7,8,9"  # keeper.RESUME_FDS without a user namespace; nothing else
        time.sleep(0.5)
        assert held.shim.poll() is None
        Path(f"{held.stand_in}.refuse").touch()
        second.close()  # and again, but now it cannot be: the VM stops rather than run unproxied
        held.shim.wait(30)
        record = json.loads((held.rundir / "exit.json").read_text())
        assert record["reason"] == ("the egress proxy is gone (the egress daemon ended and the box could not be "
                                    "registered again: the test says no); the VM was stopped")
        assert record["status"] is None
        log_text = (held.rundir / "shim.log").read_text()
        assert log_text.count("its connection ended; registering the box again") == 2
    finally:
        held.close()


INSIDE_SERVER = r'''
import socket, sys
s = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"inside the box")
    c.close()
'''


def _ask(daemon: socket.socket, text: bytes) -> tuple[dict[str, object], list[int]]:
    daemon.send(text)
    fds = array.array("i")
    data, ancillary, _flags, _ = daemon.recvmsg(4096, socket.CMSG_SPACE(4))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return json.loads(data), list(fds)


def test_a_held_registration_answers_the_daemon_for_published_ports_only(tmp_path: Path, loop_binary: Path) -> None:
    """The daemon asks the loop (root) for a socket of the box's namespace connected to a
    published port: it gets one, made in that namespace (a server there answers, not the
    host's on the same port); an unpublished port is refused; anything but the exact
    request is not answered; registering again hands the helper the ports' listeners."""
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace to connect into)")
    name, port = f"a3s-held-{os.getpid()}", 47000 + os.getpid() % 1000
    subprocess.run(["ip", "netns", "add", name], check=True)
    inside = host = held = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        inside = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", INSIDE_SERVER, str(port)],
                                  stdout=subprocess.PIPE)
        assert inside.stdout is not None and inside.stdout.readline() == b"listening\n"
        host = socket.create_server(("127.0.0.1", port))  # the same port on the host: must not be reached
        held = HeldLoop(tmp_path, loop_binary, netns=f"/run/netns/{name}", published=[port])
        good = wire.encode(wire.connect_request(2, port))  # as the daemon writes it
        for bad in (good[:-1] + b',"more":1}', good.replace(b'"id":2', b'"id":-2'), good.replace(b":2,", b": 2,"),
                    wire.encode(wire.connect_request(1, 0)), b"\0" * 64, b"{" * 200):
            held.first.send(bad)  # none of these is answered: the next answer is the next good request's
        said, fds = _ask(held.first, good)
        assert said == {"op": "connected", "id": 2} and len(fds) == 1
        with socket.socket(fileno=fds[0]) as made:
            made.setblocking(True)
            assert made.recv(100) == b"inside the box"
        said, fds = _ask(held.first, wire.encode(wire.connect_request(3, port + 1)))
        assert said == {"op": "connected", "id": 3, "error": f"port {port + 1} is not published"} and fds == []
        assert wire.parse_connected(said, len(fds)) == (3, f"port {port + 1} is not published")
        held.first.close()  # the daemon went: the helper that registers the box again gets the listener too
        second, _ = held.daemons[1].accept()
        assert held.helper_args()[4] == "fds:3,4,5,6,7,8,9,10"  # RESUME_FDS without a user namespace, then the listener
        second.close()
    finally:
        if held is not None:
            held.close()
        if host is not None:
            host.close()
        if inside is not None:
            inside.kill()
            inside.wait()
            if inside.stdout is not None:
                inside.stdout.close()
        subprocess.run(["ip", "netns", "del", name])
