#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs what it needs, then pytest.
# Everything Python runs from a virtual environment of the suite's own (./.venv, an
# editable install of this checkout with the test tools), never the system Python.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests share one home for the guest kernel and init (fetched and built once).
export A3S_BOX_TEST_HOME=${A3S_BOX_TEST_HOME:-$PWD/.cache/test-home}
export A3S_BOX_VENV=${A3S_BOX_TEST_VENV:-$PWD/.venv}
A3S_BOX_HOME=$A3S_BOX_TEST_HOME bash scripts/setup.sh --test
PY=$A3S_BOX_VENV/bin/python
export PATH="$A3S_BOX_VENV/bin:$PATH"
echo "==> mypy --strict (a3s_box, tests, bench: [tool.mypy] in pyproject.toml)" >&2
"$PY" -m mypy
echo "==> import-linter (layering contracts in pyproject.toml)" >&2
lint-imports --no-cache >/dev/null || lint-imports --no-cache
"$PY" -m pytest -q -p no:cacheprovider "$@"
