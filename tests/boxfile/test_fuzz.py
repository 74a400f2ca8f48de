"""Whatever the input, load() returns a Boxfile or raises BoxfileError with located
problems: never another exception (which the CLI would show as a traceback)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import yaml

from a3s_box.boxfile import load
from a3s_box.errors import BoxfileError

# Keys a Boxfile uses, plus near-misses, so that generated documents get deep into the
# model instead of stopping at the first unknown key.
KEYS = ["apiVersion", "images", "boxes", "pools", "project", "ref", "path", "image", "resources",
        "vcpus", "memory", "env", "namespaces", "agent", "business", "command", "isolate", "parent",
        "depends_on", "condition", "healthcheck", "lifetime", "timeouts", "ready", "box", "min_ready",
        "max", "update", "idle_timeout", "driver", "hostname", "restart", "workdir", "a", "b", "x-y"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.sampled_from(["box.a3s.dev/v1", "a", "b", "x:1", "128Mi", "5s", "1h30m", "mount", "net",
                     "agent", "started", "healthy", "${V}", "${V:-1}", "$$", "${", "", "-1", "1e9"]),
    st.text(max_size=8),
)
DOCS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.integers(0, 3), st.none(), st.booleans()), inner, max_size=5)),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(st.sampled_from(KEYS), DOCS, max_size=5))
def test_any_document_loads_or_gives_located_problems(tmp_path: Path, doc: dict[str, Any]) -> None:
    doc.setdefault("apiVersion", "box.a3s.dev/v1")
    f = tmp_path / "Boxfile.yaml"
    f.write_text(yaml.safe_dump(doc))
    try:
        load([f], {"V": "2"})
    except BoxfileError as e:
        assert e.problems and all(p.file == str(f) and p.line >= 1 for p in e.problems), e.problems
