#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs what it needs, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests share one home for the guest kernel and init (fetched and built once).
export A3S_BOX_TEST_HOME=${A3S_BOX_TEST_HOME:-$PWD/.cache/test-home}
A3S_BOX_HOME=$A3S_BOX_TEST_HOME bash scripts/setup.sh --test
echo "==> mypy --strict (a3s_box)" >&2
python3 -m mypy a3s_box
echo "==> import-linter (layering contracts in pyproject.toml)" >&2
lint-imports --no-cache >/dev/null || lint-imports --no-cache
python3 -m pytest -q -p no:cacheprovider "$@"
