"""Sizes and durations as people write and read them: the one place that parses "512Mi"
or "30s" and that prints a byte count, for every layer (it imports nothing of a3s-box).

Parsing (each raises ValueError with a message meant for people):

    parse_size(value)      a Boxfile's size: 512Mi, 1Gi, 1G (powers of 1000), 4096 (bytes)
    parse_size_arg(text)   a size typed on a command line, more forgiving: any case and an
                           optional B (10gb, 500M, 2GiB)
    parse_duration(value)  500ms, 30s, 5m, 1h30m, or bare seconds

Formatting (each form is pinned by tests or by what people already read):

    format_size(n)         exact, as a Boxfile says it: 512Mi, 1Gi, 4Ki, else bytes ("1000")
    format_bytes(n)        approximate, for tables: 512B, 1.5KiB, 12.3MiB, 20.0GiB
    format_mi(n)           a disk's use beside its format_size cap: 12.3Mi
    format_space(n)        room on a disk, in messages: 12 MiB, 1.5 GiB from a GiB up
"""
from __future__ import annotations

import math
import re

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)?\s*(Ki|Mi|Gi|Ti|K|M|G|T|k)?$"
DURATION_PATTERN = r"^(([0-9]+(\.[0-9]+)?(ms|s|m|h))+|[0-9]+(\.[0-9]+)?)$"  # bare: seconds

_SIZE = re.compile(SIZE_PATTERN)
_SIZE_ARG = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*")  # matched lower-cased
_FACTORS = {None: 1, "K": 1000, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
            "Ki": KiB, "Mi": MiB, "Gi": GiB, "Ti": TiB}
_DURATION = re.compile(DURATION_PATTERN)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(value: object) -> int:
    """Bytes, from a Boxfile's size (a string in SIZE_PATTERN, or an int of bytes)."""
    if isinstance(value, bool):
        raise ValueError("must be a size like 512Mi or 1Gi, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("must be a size like 512Mi or 1Gi")
    m = _SIZE.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a size: use a number with Ki, Mi, Gi (or K, M, G), e.g. 512Mi")
    number = value.strip()[: m.start(2)] if m.group(2) else value.strip()
    return int(float(number) * _FACTORS[m.group(2)])


def parse_size_arg(text: str) -> int:
    """Bytes, from a size typed on a command line ("10Gi", "500M", "2gb": K, M, G, T are
    powers of 1000, Ki, Mi, Gi, Ti of 1024, in any case, with or without a B)."""
    m = _SIZE_ARG.fullmatch(text.lower())
    if not m:
        raise ValueError(f"{text!r} is not a size like 10Gi or 500M")
    unit = m.group(2)
    return int(float(m.group(1)) * _FACTORS[unit.capitalize() if unit else None])


def parse_duration(value: object) -> float:
    """Seconds, from "500ms", "30s", "5m", "1h30m", a bare number string, or a number."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 30s or 5m, not a boolean")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if not isinstance(value, str) or not _DURATION.match(value.strip()):
        raise ValueError(f"{value!r} is not a duration: use e.g. 500ms, 30s, 5m, 1h30m")
    parts = _DURATION_PART.findall(value.strip())
    return sum(float(n) * _SECONDS[u] for n, u in parts) if parts else float(value)


def format_size(n: int) -> str:
    """Exact: the largest of Gi, Mi, Ki that divides N (512Mi, 1Gi), else the bytes ("1000")."""
    for unit, factor in (("Gi", GiB), ("Mi", MiB), ("Ki", KiB)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def format_bytes(n: int) -> str:
    """Approximate, for a table column: whole bytes below a KiB (512B), then one decimal
    in the largest unit up to GiB (1.5KiB, 12.3MiB, 20.0GiB)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}GiB"


def format_mi(n: int) -> str:
    """N bytes in Mi with one decimal (0.1Mi, 12.3Mi): a disk's use beside its cap."""
    return f"{n / MiB:.1f}Mi"


def format_space(n: int) -> str:
    """Room on a disk, in a message: whole MiB below a GiB (12 MiB), else GiB with one
    decimal (1.5 GiB)."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n >> 20} MiB"


def round_up_mib(n: int) -> int:
    """N rounded up to a whole MiB (what qemu-img and mkfs want of a disk's size)."""
    return (n + MiB - 1) // MiB * MiB
