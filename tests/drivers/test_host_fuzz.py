"""The host side of the guest channel against a hostile guest: the frame reader, the
shim's loop and the client never fail on what a guest root can forge, never
grow without bound; and a real shim facing a fake guest that sends garbage, oversized,
out-of-order and never-ending frames ends that guest's sessions with a clear error,
stays small, and keeps serving.

The fake guest stands in for a guest init taken over by its root (a real VM cannot be
made to send these frames without such a compromise); the shim, its sockets and the
client are the real ones."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from a3s_box.drivers.qemu.shim_loop import build_shim_loop
from a3s_box.errors import GuestError
from a3s_box.guest import protocol as p
from a3s_box.guest.client import GuestClient
from a3s_box.guest.protocol import FrameReader, MsgType

TYPES = [int(t) for t in MsgType] + [0, 0x55, 0xFF]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=300),
                          st.builds(lambda t, s, b: p.encode(t, s, b), st.sampled_from(TYPES),
                                    st.integers(0, 2**32 - 1), st.binary(max_size=200)),
                          st.just(p.MAGIC + (p.MAX_LENGTH + 1).to_bytes(4, "big"))), max_size=30))
def test_the_frame_reader_never_fails_and_stays_bounded(chunks: list[bytes]) -> None:
    r = FrameReader()
    for c in chunks:
        for f in r.feed(c):
            assert len(f.payload) <= p.MAX_PAYLOAD
        assert len(r._buf) <= p.HEADER_SIZE + p.MAX_LENGTH + len(c)
        r.errors.clear()


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000))
def test_the_client_turns_any_guest_bytes_into_a_guest_error(junk: bytes) -> None:
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(junk)
        theirs.shutdown(socket.SHUT_WR)
        with GuestClient(ours, box="fuzz") as c:
            try:
                c.hello(0.5)
                c.run(["true"], timeout=0.5)
            except GuestError:
                pass  # the one way it may fail
    finally:
        theirs.close()


FAKE_GUEST = r'''
import socket, sys, time
sys.path.insert(0, sys.argv[2])
from a3s_box.guest import protocol as p
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.recv(4096)                                       # the shim's HELLO
s.sendall(p.encode(p.MsgType.HELLO, 0, p.Writer().u16(p.VERSION).str("transport=fake").bytes()))
time.sleep(0.5)
while True:
    want = s.recv(65536)                            # an EXEC from a client, say
    if not want:
        break
    s.sendall(b"\x00garbage" * 4096)                # bad magic
    s.sendall(p.MAGIC + (p.MAX_LENGTH + 9).to_bytes(4, "big") + b"\x10" * 60)   # oversized
    s.sendall(p.encode(p.MsgType.STDOUT, 7777, b"for nobody"))                 # out of order
    s.sendall(b"\x00" * (8 << 20))                  # 8 MiB of noise
    s.sendall(p.MAGIC + (p.MAX_LENGTH).to_bytes(4, "big") + b"\x11\x00\x00\x00\x01")  # never ends
'''


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    rundir = tmp_path / "evil.box"
    rundir.mkdir()
    fake = tmp_path / "fake_guest.py"
    fake.write_text(FAKE_GUEST)
    root = str(Path(__file__).resolve().parents[2])
    (rundir / "launch.json").write_text(json.dumps({
        "box_id": "evil.box", "argv": [sys.executable, str(fake), str(rundir / "channel.sock"), root],
        "channel": str(rundir / "channel.sock"), "guest_socket": str(rundir / "guest.sock"),
        "console": str(rundir / "console.log"), "console_socket": str(rundir / "console.sock"),
        "jail": None, "loop": str(build_shim_loop(tmp_path / "cache")),
        "logging": {"max_size": 1 << 20, "max_files": 2}}))
    with open(rundir / "shim.log", "wb") as log:
        shim = subprocess.Popen([sys.executable, "-m", "a3s_box.drivers.qemu.shim", str(rundir)],
                                stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 20
    while not (rundir / "guest.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield rundir, shim
    shim.kill()
    shim.wait()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_a_hostile_guest_ends_its_sessions_and_the_shim_stays_small_and_serving(
        hostile: tuple[Path, subprocess.Popen[bytes]]) -> None:
    rundir, shim = hostile
    before = _rss_kib(shim.pid)
    for _ in range(3):
        with GuestClient(_connect(rundir), box="evil.box") as c:
            c.hello(5)  # the shim answers HELLO itself
            with pytest.raises(GuestError) as e:
                c.run(["true"], timeout=10)
            assert "the guest broke the protocol" in str(e.value) or "no answer" in str(e.value)
    time.sleep(1)
    assert shim.poll() is None  # the shim carries on
    assert _rss_kib(shim.pid) < before + 32 * 1024  # 24 MiB of junk later, no growth to speak of
    log = (rundir / "shim.log").read_text()
    assert "the guest sent" in log and "malformed frame(s)" in log and "its sessions were ended" in log
    assert "Traceback" not in log
    # a new client is still served
    with GuestClient(_connect(rundir), box="evil.box") as c:
        c.hello(5)
    console = (rundir / "console.log").read_text()
    assert "a3s-box: the guest sent" in console  # what `box logs` shows
    os.kill(shim.pid, 15)


def _connect(rundir: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(rundir / "guest.sock"))
    return s
