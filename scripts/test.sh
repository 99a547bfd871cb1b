#!/usr/bin/env bash
# Install what the tests need into .venv, then run the whole suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest "$@"
