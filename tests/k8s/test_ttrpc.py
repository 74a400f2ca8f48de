"""ttrpc's framing (pure): round trips however the bytes are cut, refuses what would
make it buffer without bound, and the generated protobuf modules are current."""
from __future__ import annotations

import tempfile
from pathlib import Path

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
