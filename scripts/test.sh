#!/usr/bin/env bash
# Fresh machine -> tests: set up .venv with the test extras, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/python -m pytest Testing
