#!/usr/bin/env bash
# Fresh machine -> demo: set up .venv, then run SpineLabel on the bundled sample spine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/spinelabel demo --out demo_out
