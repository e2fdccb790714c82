#!/usr/bin/env bash
# The test command: set up .venv if needed, then run the default test suite (< 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
. scripts/setup_env.sh
python -m pytest -q "$@"
