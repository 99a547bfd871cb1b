#!/usr/bin/env bash
# Install what the tests need into .venv, then run the whole suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# Passive OpenMP waiting: spinning threads starve each other on small, shared machines.
OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" HF_HUB_OFFLINE=1 .venv/bin/python -m pytest "$@"
