"""Test modules have distinct file names: most test folders are not packages, so pytest
imports each module by its name alone, and two of one name stop the whole collection
(it happened twice: test_build.py, test_reconcile.py)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).parent


def test_no_two_test_modules_share_a_name() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py") if not (p.parent / "__init__.py").exists())
    assert [n for n, k in names.items() if k > 1] == []
