"""The shim's routing rules (pure) and its exit report."""
from __future__ import annotations

import signal

from a3s_box.drivers.qemu.mux import GUEST, Mux, Out
from a3s_box.drivers.qemu.shim import exit_reason
from a3s_box.guest import protocol as p
from a3s_box.guest.protocol import Frame, FrameReader, MsgType

GUEST_HELLO = Frame(MsgType.HELLO, 0, p.Writer().u16(1).str("kernel=6.1\ntransport=virtio-serial")
                    .bytes())


def frames(outs: list[Out]) -> list[tuple[int, int, int, bytes]]:
    got = []
    for o in outs:
        for f in FrameReader().feed(o.data):
            got.append((o.dest, f.type, f.stream, f.payload))
    return got


def exec_from(m: Mux, cid: int, stream: int) -> int:
    (dest, _, gid, _), = frames(m.from_client(cid, Frame(MsgType.EXEC, stream, b"req")))
    assert dest == GUEST
    return gid


def test_hello_is_answered_by_the_shim_from_what_the_guest_said() -> None:
    m = Mux(GUEST_HELLO)
    assert frames(m.from_client(7, Frame(MsgType.HELLO, 0, p.Writer().u16(1).bytes()))) == [
        (7, MsgType.HELLO, 0, GUEST_HELLO.payload)]


def test_same_stream_ids_from_two_clients_get_distinct_guest_ids() -> None:
    m = Mux(GUEST_HELLO)
    ga, gb = exec_from(m, 1, 1), exec_from(m, 2, 1)
    assert ga != gb and 0 not in (ga, gb)
    assert frames(m.from_client(2, Frame(MsgType.STDIN, 1, b"x"))) == [
        (GUEST, MsgType.STDIN, gb, b"x")]
    assert frames(m.from_guest(Frame(MsgType.STDOUT, gb, b"out-b"))) == [
        (2, MsgType.STDOUT, 1, b"out-b")]
    assert frames(m.from_guest(Frame(MsgType.EXIT, ga, b"e"))) == [(1, MsgType.EXIT, 1, b"e")]
    # after EXIT the session is gone: late frames either way go nowhere
    assert m.from_guest(Frame(MsgType.STDOUT, ga, b"late")) == []
    assert m.from_client(1, Frame(MsgType.SIGNAL, 1, b"\0\0\0\x09")) == []


def test_stream0_replies_go_to_whoever_asked_in_order() -> None:
    m = Mux(GUEST_HELLO)
    m.from_client(1, Frame(MsgType.CONFIG, 0, b"cfg"))
    m.from_client(2, Frame(MsgType.SHUTDOWN, 0, b"\0"))
    assert frames(m.from_guest(Frame(MsgType.RESULT, 0, b"r1")))[0][0] == 1
    assert frames(m.from_guest(Frame(MsgType.RESULT, 0, b"r2")))[0][0] == 2
    assert m.from_guest(Frame(MsgType.RESULT, 0, b"unasked")) == []


def test_a_departed_client_has_its_sessions_killed_and_its_replies_dropped() -> None:
    m = Mux(GUEST_HELLO)
    g1, g2 = exec_from(m, 1, 1), exec_from(m, 1, 5)
    other = exec_from(m, 2, 1)
    m.from_client(1, Frame(MsgType.CONFIG, 0, b"cfg"))
    m.from_client(2, Frame(MsgType.PING, 0, b"p"))
    kill = p.Writer().u32(int(signal.SIGKILL)).bytes()
    assert frames(m.drop_client(1)) == [(GUEST, MsgType.SIGNAL, g1, kill),
                                        (GUEST, MsgType.SIGNAL, g2, kill)]
    assert m.from_guest(Frame(MsgType.STDOUT, g1, b"x")) == []
    assert m.from_guest(Frame(MsgType.RESULT, 0, b"for-1")) == []  # client 1's CONFIG reply
    assert frames(m.from_guest(Frame(MsgType.PONG, 0, b"p")))[0][0] == 2
    assert m.sessions(2) == 1 and frames(m.from_guest(Frame(MsgType.STDOUT, other, b"y")))


def test_exit_reasons() -> None:
    assert exit_reason(0)["reason"] == "the guest powered off"
    assert exit_reason(-9) == {"status": None, "signal": 9, "reason": "qemu was killed by SIGKILL"}
    assert str(exit_reason(1)["reason"]).startswith("qemu exited with status 1")
