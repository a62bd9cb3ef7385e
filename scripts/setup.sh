#!/usr/bin/env bash
# Create ./.venv with SpineLabel and its dependencies (CPU PyTorch from the local package index).
# Usage: scripts/setup.sh [extra]   e.g. scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
extra="${1:+[$1]}"
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" -e ".${extra}"
