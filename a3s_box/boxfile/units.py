"""Sizes ("512Mi", "1G", 1048576) and durations ("500ms", "1h30m", 30) in a Boxfile."""
from __future__ import annotations

import math
import re

SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)?\s*(Ki|Mi|Gi|Ti|K|M|G|T|k)?$"
DURATION_PATTERN = r"^(([0-9]+(\.[0-9]+)?(ms|s|m|h))+|[0-9]+(\.[0-9]+)?)$"  # bare: seconds

_SIZE = re.compile(SIZE_PATTERN)
_FACTORS = {None: 1, "K": 1000, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
            "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
_DURATION = re.compile(DURATION_PATTERN)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(value: object) -> int:
    """Bytes. Raises ValueError with a message meant for people."""
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


def parse_duration(value: object) -> float:
    """Seconds. Raises ValueError with a message meant for people."""
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
