"""a3s_box.units: every form a size or a duration is read and written in, one table each."""
from __future__ import annotations

import pytest

from a3s_box.units import (format_bytes, format_mi, format_size, format_space, parse_duration,
                           parse_size, parse_size_arg, round_up_mib)


@pytest.mark.parametrize("value,expected", [
    ("512Mi", 512 << 20), ("1Gi", 1 << 30), ("1G", 10**9), ("4k", 4000), ("1.5Ki", 1536),
    ("3 Mi", 3 << 20), ("0", 0), (4096, 4096),
])
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value,message", [
    (True, "must be a size like 512Mi or 1Gi, not a boolean"), (-1, "must not be negative"),
    (1.5, "must be a size like 512Mi or 1Gi"),
    ("10GB", "'10GB' is not a size: use a number with Ki, Mi, Gi (or K, M, G), e.g. 512Mi"),
    ("1mi", "'1mi' is not a size: use a number with Ki, Mi, Gi (or K, M, G), e.g. 512Mi"),
])
def test_parse_size_refuses(value: object, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_size(value)
    assert str(e.value) == message


@pytest.mark.parametrize("text,expected", [
    ("10Gi", 10 << 30), ("500M", 500 * 10**6), ("10gb", 10 * 10**9), ("2GiB", 2 << 30),
    ("1ti", 1 << 40), (" 3 k ", 3000), ("0", 0), ("7b", 7),
])
def test_parse_size_arg(text: str, expected: int) -> None:
    assert parse_size_arg(text) == expected


@pytest.mark.parametrize("text", ["lots", "", "-1", "1e3", "5kk"])
def test_parse_size_arg_refuses(text: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_size_arg(text)
    assert str(e.value) == f"{text!r} is not a size like 10Gi or 500M"


@pytest.mark.parametrize("value,expected", [
    ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("12", 12.0), (2, 2.0),
])
def test_parse_duration(value: object, expected: float) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize("value", [True, -1, float("inf"), "10 minutes", None])
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("n,size,bytes_,mi,space", [
    (0, "0", "0B", "0.0Mi", "0 MiB"),
    (1000, "1000", "1000B", "0.0Mi", "0 MiB"),
    (4096, "4Ki", "4.0KiB", "0.0Mi", "0 MiB"),
    (1536 << 10, "1536Ki", "1.5MiB", "1.5Mi", "1 MiB"),
    (512 << 20, "512Mi", "512.0MiB", "512.0Mi", "512 MiB"),
    (1 << 30, "1Gi", "1.0GiB", "1024.0Mi", "1.0 GiB"),
    (3 << 40, "3072Gi", "3072.0GiB", "3145728.0Mi", "3072.0 GiB"),
])
def test_formats(n: int, size: str, bytes_: str, mi: str, space: str) -> None:
    assert (format_size(n), format_bytes(n), format_mi(n), format_space(n)) == (size, bytes_, mi, space)


@pytest.mark.parametrize("n,expected", [(0, 0), (1, 1 << 20), (1 << 20, 1 << 20), ((1 << 20) + 1, 2 << 20)])
def test_round_up_mib(n: int, expected: int) -> None:
    assert round_up_mib(n) == expected
