#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs what it needs, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export A3S_BOX_TEST_HOME=${A3S_BOX_TEST_HOME:-$PWD/.cache/test-home}
python3 -m pytest -q -p no:cacheprovider "$@"
