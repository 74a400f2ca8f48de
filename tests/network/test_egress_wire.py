"""The supervisor <-> egress daemon protocol without sockets: what a client may send and
what becomes of it. Attacker: a client of the daemon's socket that sends anything (only
root may connect, but a bug in a supervisor must not take other boxes down): whatever it
sends is a Registration, or WireError, never another exception."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st

from a3s_box.jail.ids import UID_BASE, UID_SPAN
from a3s_box.network import wire


def _registration(**over: Any) -> dict[str, Any]:
    reg = wire.Registration("box-a", {"mode": "allowlist", "egress": ["api.test:443"]},
                            {"TOKEN": {"placeholder": "a3s-secret-token-x", "value": "v", "hosts": ["api.test"]}},
                            None, (20000,), b"-----CERT-----", b"-----KEY-----")
    return {**reg.message(), **over}


def test_a_registration_goes_through_the_wire_unchanged() -> None:
    msg = wire.decode(wire.encode(_registration()))
    reg = wire.parse_registration(msg, 5)
    assert (reg.box_id, reg.published, reg.ca_cert, reg.ca_key, reg.fd_count) == \
        ("box-a", (20000,), b"-----CERT-----", b"-----KEY-----", 5)
    assert reg.message() == _registration()


@pytest.mark.parametrize("over,fds,why", [
    ({}, 4, "4 descriptors with a registration that needs 5"),
    ({}, 6, "6 descriptors"),
    ({"v": 1}, 5, "not a version 2 registration"),
    ({"op": "connect"}, 5, "not a version 2 registration"),
    ({"box_id": ""}, 5, "box_id"),
    ({"box_id": 7}, 5, "box_id"),
    ({"policy": []}, 5, "policy"),
    ({"secrets": {"X": "value"}}, 5, "secrets"),
    ({"published": [0]}, 5, "not a port"),
    ({"published": [True]}, 5, "not a port"),
    ({"published": [70000]}, 5, "not a port"),
    ({"published": list(range(1, 70))}, 73, "at most 64"),
    ({"ca": {"cert": "x"}}, 5, "ca:"),
    ({"ca": {"cert": "é", "key": "k"}}, 5, "ca: not PEM"),
    ({"logging": "big"}, 5, "logging"),
])
def test_a_malformed_registration_is_refused(over: dict[str, Any], fds: int, why: str) -> None:
    with pytest.raises(wire.WireError, match=why):
        wire.parse_registration(_registration(**over), fds)


def test_oversized_and_garbage_packets_are_refused() -> None:
    with pytest.raises(wire.WireError, match="longer than"):
        wire.decode(b"{}", truncated=True)
    with pytest.raises(wire.WireError, match="longer than"):
        wire.decode(b"{" + b" " * wire.MAX_REPLY + b"}", limit=wire.MAX_REPLY)
    with pytest.raises(wire.WireError, match="not JSON"):
        wire.decode(b"\xff\xfe")
    with pytest.raises(wire.WireError, match="not a JSON object"):
        wire.decode(b"[1]")
    with pytest.raises(wire.WireError, match="not JSON"):
        wire.decode(b"[" * 100_000)
    with pytest.raises(wire.WireError, match="a message of"):
        wire.encode({"policy": "x" * wire.MAX_MESSAGE})


def test_connect_requests_and_answers() -> None:
    assert wire.parse_connect_request(wire.connect_request(3, 20000)) == (3, 20000)
    assert wire.parse_connected(wire.connected(3), 1) == (3, None)
    assert wire.parse_connected(wire.connected(3, "refused"), 0) == (3, "refused")
    with pytest.raises(wire.WireError):
        wire.parse_connected(wire.connected(3), 0)  # a success carries its socket
    with pytest.raises(wire.WireError):
        wire.parse_connected(wire.connected(3, "refused"), 1)  # an error carries none
    with pytest.raises(wire.WireError):
        wire.parse_connect_request({"op": "connect", "id": "1", "port": 80})


def test_the_daemons_uid_is_no_boxs() -> None:
    assert not UID_BASE <= wire.DAEMON_UID < UID_BASE + UID_SPAN
    assert wire.DAEMON_UID > 65535  # above what distributions hand out, as the boxes' ids are


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=4), max_leaves=12)


@given(st.binary(max_size=200) | _json.map(lambda v: json.dumps(v).encode()), st.integers(0, 70))
def test_whatever_a_client_sends_is_a_registration_or_a_wire_error(data: bytes, fds: int) -> None:
    try:
        wire.parse_registration(wire.decode(data), fds)
    except wire.WireError:
        pass


@given(st.dictionaries(st.sampled_from(["v", "op", "box_id", "policy", "secrets", "logging", "published", "ca"]),
                       _json, max_size=8), st.integers(0, 70))
def test_whatever_fields_a_registration_has_it_parses_or_is_refused(fields: dict[str, Any], fds: int) -> None:
    try:
        wire.parse_registration({**_registration(), **fields}, fds)
    except wire.WireError:
        pass


def test_the_network_conf_is_gone_once_a_supervisor_read_it(tmp_path: Path) -> None:
    """network.json holds secret values: the supervisor takes it, the disk keeps nothing."""
    from a3s_box.network.registration import EgressError, take_network_conf

    (tmp_path / "network.json").write_text('{"box_id": "a", "secrets": {"T": {"value": "v"}}}')
    assert take_network_conf(tmp_path)["secrets"]["T"]["value"] == "v"
    assert not (tmp_path / "network.json").exists()
    with pytest.raises(EgressError, match="network.json"):
        take_network_conf(tmp_path)


def test_secrets_updates_and_their_answer() -> None:
    secrets = {"T": {"placeholder": "a3s-secret-t-1", "value": "v", "hosts": ["a.test"]}}
    assert wire.parse_secrets_update(wire.decode(wire.encode(wire.secrets_update(secrets))), 0) == secrets
    for bad, fds in (({"op": "secrets", "secrets": []}, 0), ({"op": "secrets", "secrets": {"T": 1}}, 0),
                     ({"op": "secrets", "secrets": secrets}, 1), ({"op": "connected", "secrets": secrets}, 0)):
        with pytest.raises(wire.WireError):
            wire.parse_secrets_update(bad, fds)
    assert wire.secrets_applied() == {"op": "secrets", "ok": True}


@given(_json, st.integers(0, 2))
def test_whatever_an_update_says_is_secrets_or_a_wire_error(value: Any, fds: int) -> None:
    try:
        wire.parse_secrets_update({"op": "secrets", "secrets": value}, fds)
    except wire.WireError:
        pass
