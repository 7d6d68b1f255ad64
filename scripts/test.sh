#!/usr/bin/env bash
# Install everything (scripts/install.sh) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"
python -m pytest "$@"
