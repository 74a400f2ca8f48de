"""ttrpc's framing (pure): round trips however the bytes are cut, refuses what would
make it buffer without bound, and the generated protobuf modules are current."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from a3s_box.k8s import ttrpc
from a3s_box.k8s.proto import generate

messages = st.builds(ttrpc.Message, st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 3]),
                     st.binary(max_size=300), st.integers(0, 7))


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, max_size=10), st.lists(st.integers(1, 64), max_size=20))
def test_messages_round_trip_however_the_stream_is_cut(msgs: list[ttrpc.Message], cuts: list[int]) -> None:
    wire = b"".join(ttrpc.encode(m) for m in msgs)
    r, got, i = ttrpc.Reader(), [], 0
    for c in cuts:
        got += r.feed(wire[i:i + c])
        i += c
    got += r.feed(wire[i:])
    assert got == msgs


def test_a_header_announcing_too_much_or_an_unknown_type_is_an_error() -> None:
    with pytest.raises(ttrpc.TtrpcError, match="announced a message of"):
        ttrpc.Reader().feed(ttrpc.HEADER.pack(ttrpc.MAX_LENGTH + 1, 1, 1, 0))
    with pytest.raises(ttrpc.TtrpcError, match="unknown ttrpc message type 9"):
        ttrpc.Reader().feed(ttrpc.HEADER.pack(0, 1, 9, 0))
    with pytest.raises(ttrpc.TtrpcError):
        ttrpc.encode(ttrpc.Message(1, 1, b"x" * (ttrpc.MAX_LENGTH + 1)))


def test_requests_and_responses_carry_what_containerd_sends() -> None:
    m = ttrpc.request(3, "containerd.task.v2.Task", "State", b"\x0a\x02id", timeout_ns=5_000_000_000,
                      metadata={"containerd-namespace": "default"})
    req = ttrpc.parse_request(ttrpc.Reader().feed(ttrpc.encode(m))[0])
    assert (req.service, req.method, req.payload, req.timeout_nano) == \
        ("containerd.task.v2.Task", "State", b"\x0a\x02id", 5_000_000_000)
    assert [(kv.key, kv.value) for kv in req.metadata] == [("containerd-namespace", "default")]
    resp = ttrpc.parse_response(ttrpc.response(3, code=12, message="not implemented"))
    assert (resp.status.code, resp.status.message, resp.payload) == (12, "not implemented", b"")
    with pytest.raises(ttrpc.TtrpcError, match="not a ttrpc request"):
        ttrpc.parse_request(ttrpc.Message(1, 1, b"\xff\xff\xff"))


def test_the_generated_modules_are_current() -> None:
    with tempfile.TemporaryDirectory() as d:
        for made in generate.generate(Path(d)):
            committed = Path(generate.__file__).parent / made.name
            assert made.read_text() == committed.read_text(), f"stale: run python -m a3s_box.k8s.proto.generate"


def test_the_dispatcher_answers_what_it_knows_and_names_what_it_does_not() -> None:
    from a3s_box.k8s.service import UNIMPLEMENTED, Dispatcher, ShimError

    def state(payload: bytes) -> bytes:
        raise ShimError(5, "container c1 not found")
    d = Dispatcher({"Connect": lambda p: b"\x08\x07", "State": state})
    ok = ttrpc.parse_response(d.handle(ttrpc.request(1, "containerd.task.v2.Task", "Connect", b"")))
    assert (ok.status.code, ok.payload) == (0, b"\x08\x07")
    nf = ttrpc.parse_response(d.handle(ttrpc.request(3, "containerd.task.v2.Task", "State", b"")))
    assert (nf.status.code, nf.status.message) == (5, "container c1 not found")
    un = ttrpc.parse_response(d.handle(ttrpc.request(5, "containerd.task.v2.Task", "Create", b"")))
    assert un.status.code == UNIMPLEMENTED and "Create" in un.status.message


def test_the_shim_starts_its_daemon_prints_its_address_and_serves_ttrpc(tmp_path: Path) -> None:
    """As containerd runs it: `start` in the bundle folder, then ttrpc on the address."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time

    from a3s_box.k8s.proto import shim_pb2

    env = {**os.environ, "A3S_BOX_SHIM_RUN": str(tmp_path / "run")}
    r = subprocess.run([sys.executable, "-m", "a3s_box.k8s.shim", "-namespace", "default", "-id", "c1",
                        "-address", "/run/containerd/containerd.sock", "start"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("unix://"), r
    path = r.stdout.removeprefix("unix://")
    assert os.stat(path).st_mode & 0o777 == 0o600
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    reader = ttrpc.Reader()

    def call(stream: int, method: str) -> Any:  # a ttrpc Response (ttrpc_pb2 is built at run time)
        s.sendall(ttrpc.encode(ttrpc.request(stream, "containerd.task.v2.Task", method, b"")))
        msgs: list[ttrpc.Message] = []
        while not msgs:
            msgs = reader.feed(s.recv(65536))
        return ttrpc.parse_response(msgs[0])
    connected = call(1, "Connect")
    reply = shim_pb2.ConnectResponse()  # type: ignore[attr-defined]  # no .pyi: classes made at import
    reply.ParseFromString(connected.payload)
    try:
        assert reply.version == "a3s-box" and reply.shim_pid > 0
        created = call(3, "Create")
        assert created.status.code == 9
        assert "has no readable config.json" in created.status.message
        assert call(7, "Pids").status.code == 5
        assert call(9, "Checkpoint").status.code == 12
        # a container of this pod (as the CRI plugin annotates it) gets the same daemon
        member = tmp_path / "member"
        member.mkdir()
        (member / "config.json").write_text(json.dumps({"annotations": {
            "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "c1"}}))
        again = subprocess.run([sys.executable, "-m", "a3s_box.k8s.shim", "-namespace", "default", "-id", "c2",
                                "-address", "/run/containerd/containerd.sock", "start"], cwd=member, env=env,
                               capture_output=True, text=True, timeout=30)
        assert (again.returncode, again.stdout) == (0, r.stdout), again
        assert not (member / "a3sbox-shim.log").exists()  # no second daemon was spawned
        call(5, "Shutdown")
        s.close()
    except BaseException:
        s.close()
        os.kill(reply.shim_pid, 9)  # a failing test leaves no daemon behind
        raise
    deadline = time.monotonic() + 10
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(path)  # the daemon is gone, and its socket with it
    d = subprocess.run([sys.executable, "-m", "a3s_box.k8s.shim", "-namespace", "default", "-id", "c1", "delete"],
                       cwd=tmp_path, env=env, capture_output=True, timeout=30)
    gone = shim_pb2.DeleteResponse()  # type: ignore[attr-defined]  # (no .pyi, as above)
    gone.ParseFromString(d.stdout)
    assert d.returncode == 0 and gone.exit_status == 137
