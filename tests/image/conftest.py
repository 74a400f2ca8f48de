from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # so `tests.registry` imports

from tests.registry import registry  # noqa: E402,F401  (the session-scoped fixture)
from tests.image.faultproxy import FaultProxy  # noqa: E402
from tests.registry import Registry  # noqa: E402


@pytest.fixture(scope="module")
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    p = FaultProxy(registry.host)
    try:
        yield p
    finally:
        p.close()
