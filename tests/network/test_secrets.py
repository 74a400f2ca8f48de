"""Where a placeholder may stand, and the scrubber: pure, no sockets.

Attacker: the guest writes the request head and wants the value back (in a target or a
body that the upstream echoes) or sent elsewhere. The value goes only into a header
value where the placeholder is a whole token, on a flow to one of its hosts."""
from __future__ import annotations

import base64

import pytest
from hypothesis import given, strategies as st

from a3s_box.network.secrets import Scrubber, Secret, SecretBook

PH = b"a3s-secret-key-0123456789abcdef01234567"
OTHER = b"a3s-secret-other-89abcdef0123456789abcdef"
BOOK = SecretBook([Secret("KEY", PH.decode(), "sk-real-value", ("api.test",)),
                   Secret("OTHER", OTHER.decode(), "other-value", ("x.test",))])


def _sub(fields: list[tuple[bytes, bytes]], target: bytes = b"/", host: str | None = "api.test"
         ) -> tuple[str, list[tuple[bytes, bytes]], list[str]]:
    return BOOK.substitute_fields(target, fields, host)


@pytest.mark.parametrize("value,expected", [
    (b"Bearer " + PH, b"Bearer sk-real-value"),
    (PH, b"sk-real-value"),
    (b"Basic " + base64.b64encode(b"user:" + PH), b"Basic " + base64.b64encode(b"user:sk-real-value")),
    (b"Basic " + base64.b64encode(PH + b":x"), b"Basic " + base64.b64encode(b"sk-real-value:x")),
])
def test_a_whole_token_in_a_header_value_is_replaced_for_its_host(value: bytes, expected: bytes) -> None:
    refusal, fields, used = _sub([(b"Authorization", value), (b"Accept", b"*/*")])
    assert (refusal, fields, used) == ("", [(b"Authorization", expected), (b"Accept", b"*/*")], ["KEY"])


@pytest.mark.parametrize("target,fields,host,why", [
    (b"/v1/models/" + PH, [], "api.test", "in the request target"),
    (b"/collect?k=" + PH, [], "api.test", "in the request target"),
    (b"/", [(PH, b"x")], "api.test", "in a header name"),
    (b"/", [(PH, b"x")], "x.test", "in a header name"),
    (b"/", [(b"Cookie", b"k=" + PH)], "api.test", "not a whole token"),
    (b"/", [(b"Authorization", b"Bearer " + PH + b"x")], "api.test", "not a whole token"),
    (b"/", [(b"Authorization", b"Bearer " + PH)], "x.test", "sent to x.test"),
    (b"/", [(b"Authorization", b"Bearer " + PH)], None, "sent over plain HTTP"),
    (b"/", [(b"X", b"Basic " + base64.b64encode(b"a:b" + PH))], "api.test", "not a whole token"),
    (b"/", [(b"X", b"Basic " + base64.b64encode(b"u:" + OTHER))], "api.test", "sent to api.test"),
])
def test_a_placeholder_anywhere_else_is_refused(target: bytes, fields: list[tuple[bytes, bytes]],
                                                host: str | None, why: str) -> None:
    refusal, out, used = _sub(fields, target, host)
    assert why in refusal and out == [] and used == []


def test_the_scrubber_turns_values_back_across_chunk_edges() -> None:
    s = BOOK.scrubber("api.test")
    text = b'{"error": "The model sk-real-value does not exist"} sk-real-valu'
    out = b"".join(s.feed(text[i:i + 3]) for i in range(0, len(text), 3)) + s.flush()
    assert out == text.replace(b"sk-real-value", PH)
    assert s.feed(b"data: 1\n\n") == b"data: 1\n\n"  # nothing held back that cannot begin a value
    assert not BOOK.scrubber("nobody.test")


@given(st.lists(st.binary(max_size=40), max_size=12), st.sampled_from([b"sk-real-value", b""]))
def test_scrubbing_a_stream_never_lets_the_value_through(chunks: list[bytes], inject: bytes) -> None:
    s = Scrubber({b"sk-real-value": PH})
    chunks = chunks + [inject[:5], inject[5:]]
    out = b"".join(s.feed(c) for c in chunks) + s.flush()
    assert b"sk-real-value" not in out
    assert out.replace(PH, b"sk-real-value") == b"".join(chunks).replace(PH, b"sk-real-value") or PH in b"".join(chunks)


@given(st.lists(st.binary(max_size=40) | st.sampled_from([b"sk-real-value", b"sk-re", b"al-value", b"s", b"xs"]),
                max_size=12))
def test_the_scrubbers_fast_path_sends_exactly_what_feeding_would(chunks: list[bytes]) -> None:
    """exchange.py sends a chunk untouched when passes() says so, and feeds it otherwise:
    the stream the box gets must be the one feeding every chunk gives."""
    fed, fast = Scrubber({b"sk-real-value": PH}), Scrubber({b"sk-real-value": PH})
    out = b""
    for c in chunks:
        buffer = bytearray(c + b"junk beyond the read")
        out += c if fast.passes(buffer, len(c)) else fast.feed(c)
    out += fast.flush()
    assert out == b"".join(fed.feed(c) for c in chunks) + fed.flush()
    assert b"sk-real-value" not in out
