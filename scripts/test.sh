#!/usr/bin/env bash
# Install everything (scripts/install.sh) and run the test suite. Extra arguments go to pytest.
# The tests run in one pytest-xdist worker per CPU core (WKD_TEST_WORKERS=N to choose; 0: in this process); the
# multi-process tests of tests/distributed run one at a time, in one worker (their `xdist_group`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"
python -m pytest -n "${WKD_TEST_WORKERS:-auto}" --dist loadgroup "$@"
