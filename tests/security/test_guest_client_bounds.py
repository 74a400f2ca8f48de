"""The host's guest client against a lying guest: what `box`, `box serve` and the pool
filler read from a guest is bounded, every call has an overall deadline, and a status
the guest garbles is that box's error, not a crash.

The guest is faked: a thread on the other end of a socket pair speaking the guest
protocol as a guest init taken over by its root would (a real guest init cannot be
made to send these answers without such a compromise). The client is the real one."""
from __future__ import annotations

import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from a3s_box.errors import GuestError
from a3s_box.guest import protocol as p
from a3s_box.guest.client import GuestClient
from a3s_box.guest.protocol import FrameReader, MsgType

Answer = Callable[[socket.socket, p.Frame], None]
LyingGuest = Callable[[Answer], GuestClient]  # the fixture: a client whose guest answers with `answer`


@pytest.fixture
def lying_guest() -> Iterator[LyingGuest]:
    made: list[tuple[GuestClient, socket.socket]] = []

    def make(answer: Answer) -> GuestClient:
        ours, theirs = socket.socketpair()

        def serve() -> None:
            reader = FrameReader()
            try:
                while data := theirs.recv(1 << 16):
                    for f in reader.feed(data):
                        answer(theirs, f)
            except OSError:
                pass
        threading.Thread(target=serve, daemon=True).start()
        client = GuestClient(ours, box="victim")
        made.append((client, theirs))
        return client
    yield make
    for client, theirs in made:
        client.close()
        theirs.close()


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_small_read_answered_with_a_flood_fails_without_growing_the_host(lying_guest: LyingGuest) -> None:
    chunk = b"x" * (256 << 10)

    def flood(sock: socket.socket, f: p.Frame) -> None:
        if f.type == MsgType.GET:
            try:
                for _ in range(400):  # 100 MiB for a 10-byte file
                    sock.sendall(p.encode(MsgType.DATA, f.stream, chunk))
            except OSError:
                pass
    client = lying_guest(flood)
    before = _rss_mib()
    with pytest.raises(GuestError, match=r"get /etc/hostname: the guest sent more than 8 MiB"):
        client.get("/etc/hostname", max_bytes=8 << 20)
    assert _rss_mib() - before < 40  # the peak, not the last reading: nothing piled up


def test_a_read_that_never_ends_hits_its_deadline(lying_guest: LyingGuest) -> None:
    def trickle(sock: socket.socket, f: p.Frame) -> None:
        if f.type == MsgType.GET:
            def forever() -> None:
                try:
                    while True:  # each frame in time; the call as a whole never done
                        sock.sendall(p.encode(MsgType.DATA, f.stream, b"."))
                        time.sleep(0.05)
                except OSError:
                    pass
            threading.Thread(target=forever, daemon=True).start()
    client = lying_guest(trickle)
    with pytest.raises(GuestError, match=r"get /x: not done after 1.0s"):
        client.get("/x", timeout=1.0)


def test_a_flooding_command_is_ended_and_the_call_fails(lying_guest: LyingGuest) -> None:
    signalled = threading.Event()

    def flood(sock: socket.socket, f: p.Frame) -> None:
        if f.type == MsgType.EXEC:
            def out() -> None:
                try:
                    while not signalled.is_set():
                        sock.sendall(p.encode(MsgType.STDOUT, f.stream, b"y" * 65536))
                    sock.sendall(p.encode(MsgType.EXIT, f.stream,
                                          p.Writer().u8(int(p.ExitKind.SIGNALED)).i32(9).str("").bytes()))
                except OSError:
                    pass
            threading.Thread(target=out, daemon=True).start()
        elif f.type == MsgType.SIGNAL:
            signalled.set()
    client = lying_guest(flood)
    with pytest.raises(GuestError, match=r"yes: stdout over 4 MiB"):
        client.run(["yes"], max_output=4 << 20, timeout=60)
    assert signalled.is_set()  # the host ended it rather than read on


@pytest.mark.parametrize("status", [
    "agent_state=running\nrestarts=many\n",
    "agent_state=\x1b]0;owned\x07running\n",
    "agent_state=" + "r" * 5000 + "\n",
    "".join(f"k{i}=v\n" for i in range(500)),
])
def test_a_garbled_status_is_this_boxs_error(lying_guest: LyingGuest, status: str) -> None:
    def answer(sock: socket.socket, f: p.Frame) -> None:
        if f.type == MsgType.STATUS:
            sock.sendall(p.encode(MsgType.STATUS_REPLY, f.stream, p.Writer().str(status).bytes()))
    client = lying_guest(answer)
    with pytest.raises(GuestError, match=r"box victim: status: bad answer from guest"):
        client.status()


def test_box_ps_lists_every_box_when_one_guest_lies(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Host.ps asks each running box's guest for its status: the liar's row says so,
    the others are listed as usual (the runtime is faked: no VM is needed to lie)."""
    from contextlib import contextmanager

    from a3s_box.home import Home
    from a3s_box.orchestrator.host import Host
    from a3s_box.orchestrator.state import BoxRow

    host = Host(Home(tmp_path))
    rows = [BoxRow(id=f"p.{n}", project="p", name=n, image="sha256:" + "0" * 64, driver="qemu", status="running",
                   spec={}, spec_hash="", handle=None) for n in ("honest", "liar")]

    @contextmanager
    def client(row: BoxRow, timeout: float = 10.0) -> Iterator[object]:
        class Fake:
            def status(self) -> p.GuestStatus:
                if row.name == "liar":
                    raise GuestError(row.id, "status: bad answer from guest: restarts 'many' is not a number")
                return p.GuestStatus({"agent_state": "running"})
        yield Fake()
    monkeypatch.setattr(host, "client", client)
    details = {r.name: host._agent_detail(r) for r in rows}
    assert details == {"honest": "agent running",
                       "liar": "guest not answering: box p.liar: status: bad answer from guest: "
                               "restarts 'many' is not a number"}
    host.close()
