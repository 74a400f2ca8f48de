"""The fork server's protocol (sans-IO): what it accepts, what it refuses, fuzzed."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from a3s_box.forkserver import wire

SHIM = "a3s_box.drivers.qemu.shim"


def test_a_request_and_a_reply_round_trip() -> None:
    r = wire.Request(SHIM, ("/home/x/boxes/p.b",), "/home/x", 0o027)
    assert wire.decode_request(wire.encode_request(r)) == r
    assert wire.decode_reply(wire.encode_reply(wire.Reply(pid=42))) == wire.Reply(pid=42)
    assert wire.decode_reply(wire.encode_reply(wire.Reply(error="no"))) == wire.Reply(error="no")


@pytest.mark.parametrize("change, said", [
    ({"module": "os"}, "not a module this server runs: 'os'"),
    ({"module": "a3s_box.forkserver.server"}, "not a module this server runs"),
    ({"args": ["a\0b"]}, "args: a list of at most 16 strings without NUL"),
    ({"args": ["x"] * 17}, "args: a list of at most 16 strings"),
    ({"args": "x"}, "args: a list"),
    ({"cwd": "relative"}, "cwd: an absolute path"),
    ({"umask": True}, "umask: an integer"),
    ({"umask": 0o1000}, "umask: an integer"),
    ({"v": 2}, "protocol version 2"),
    ({"env": {"LD_PRELOAD": "/tmp/x.so"}}, "unknown fields: ['env']"),
])
def test_a_request_outside_the_protocol_is_refused(change: dict[str, object], said: str) -> None:
    good = json.loads(wire.encode_request(wire.Request(SHIM, ("/r",))))
    with pytest.raises(wire.WireError, match=said.replace("[", r"\[").replace("]", r"\]")):
        wire.decode_request(json.dumps({**good, **change}).encode())


def test_oversized_or_truncated_messages_are_refused() -> None:
    with pytest.raises(wire.WireError, match="longer than"):
        wire.decode_request(b"{" + b" " * wire.MAX_MESSAGE + b"}")
    with pytest.raises(wire.WireError, match="longer than"):
        wire.decode_reply(b'{"pid": 1}', truncated=True)
    with pytest.raises(wire.WireError, match="exactly one field"):
        wire.decode_reply(b'{"pid": 1, "error": "x"}')
    with pytest.raises(wire.WireError, match="pid 0"):
        wire.decode_reply(b'{"pid": 0}')


@settings(max_examples=300)
@given(st.binary(max_size=512) | st.builds(lambda v: json.dumps(v).encode(), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["v", "module", "args", "cwd", "umask", "pid", "error", "x"]), inner, max_size=6))))
def test_anything_a_peer_sends_decodes_or_is_a_wire_error(data: bytes) -> None:
    for decode in (wire.decode_request, wire.decode_reply):
        try:
            decode(data)
        except wire.WireError:
            pass
