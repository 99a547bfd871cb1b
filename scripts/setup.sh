#!/usr/bin/env bash
# Create .venv and install the package with the extras named in $1 (default: all).
# torch is installed first, pinned by MM2D_TORCH (default torch==2.13.0: a CPU build on this
# project's machines, seconds to install); pyproject only asks torch>=2.1, so users keep their own.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
[ -x .venv/bin/python ] || python3 -m venv .venv  # an existing .venv is kept as it is
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "${MM2D_TORCH:-torch==2.13.0}"
.venv/bin/pip install -q -e ".[${extras}]"
