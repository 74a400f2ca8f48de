#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs what it needs, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export A3S_BOX_TEST_HOME=${A3S_BOX_TEST_HOME:-$PWD/.cache/test-home}
echo "==> mypy --strict (a3s_box)" >&2
python3 -m mypy a3s_box
echo "==> import-linter (layering contracts in pyproject.toml)" >&2
lint-imports --no-cache >/dev/null || lint-imports --no-cache
python3 -m pytest -q -p no:cacheprovider "$@"
