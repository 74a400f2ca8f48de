"""ScanBuffer.find (glibc memmem through ctypes) answers exactly as bytearray.find."""
from __future__ import annotations

from hypothesis import given, strategies as st

from a3s_box.network.scan import ScanBuffer


@given(st.binary(min_size=1, max_size=300), st.binary(max_size=20), st.integers(-5, 310), st.integers(-5, 310))
def test_find_answers_as_bytearray_find(data: bytes, needle: bytes, start: int, end: int) -> None:
    buf = ScanBuffer(len(data))
    buf.view[:] = data
    start = max(start, 0)  # the proxy never asks from a negative index
    assert buf.find(needle, start, end) == bytearray(data).find(needle, start, end)


@given(st.binary(min_size=1, max_size=40), st.integers(0, 200), st.integers(0, 200))
def test_a_needle_placed_anywhere_is_found_where_it_is(needle: bytes, before: int, after: int) -> None:
    data = b"\0" * before + needle + b"\0" * after
    buf = ScanBuffer(len(data))
    buf.view[:] = data
    assert buf.find(needle, 0, len(data)) == bytearray(data).find(needle)
    assert buf.find(needle, 0, before + len(needle) - 1) == bytearray(data).find(needle, 0, before + len(needle) - 1)
