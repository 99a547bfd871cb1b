#!/usr/bin/env bash
# The GPU checks of issue #29 in one go, under 8 minutes on one CUDA GPU (each step has its own limit):
#   1. the suite's CUDA tests (tests/test_cuda.py: float16 and bfloat16 weights, bf16 compute, every
#      pooling, depth cuts, exit heads, the large stand-in against sentence-transformers) and int8's
#      refusal on cuda (tests/test_int8.py);
#   2. the stand-in of mxbai-embed-2d-large-v1 (benchmarks/large_checkpoint.py), then the GPU table
#      (benchmarks/large_model.py gpu: batch sizes 32 to 256, float16/bfloat16/float32 against
#      sentence-transformers at 24 and 12 layers, peak GPU memory in fresh processes);
#   3. a `mm2d serve` throughput run on that model (benchmarks/serving.py; the server in float32,
#      its default, on the GPU, its default device).
# Run from anywhere: bash benchmarks/gpu.sh [OUT_FOLDER]. Needs the STS Benchmark ($MM2D_STSB_DIR, else
# ../shared/data/stsb beside the repository). Without a CUDA device it stops at once, exit status 2.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1
OUT=${1:-${OUT:-$(mktemp -d -t mm2d-gpu-XXXX)}}
STSB=${MM2D_STSB_DIR:-../shared/data/stsb}

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "benchmarks/gpu.sh: torch $("$PYTHON" -c 'import torch; print(torch.__version__)') sees no CUDA device: nothing was run" >&2
    exit 2
fi
if [ ! -f "$STSB/sts-dev.csv" ]; then
    echo "benchmarks/gpu.sh: no STS Benchmark at $STSB (set MM2D_STSB_DIR to a folder with sts-dev.csv)" >&2
    exit 2
fi
mkdir -p "$OUT"
echo "results go to $OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt" || true

failed=()
step() {  # step NAME SECONDS COMMAND...: run it with a time limit, output to $OUT/NAME.txt; go on if it fails
    local name=$1 seconds=$2
    shift 2
    echo "== $name (at most $seconds s)"
    if ! timeout "$seconds" "$@" > >(tee "$OUT/$name.txt") 2>&1; then
        failed+=("$name")
    fi
}
FOLDER=$(mktemp -d -t mm2d-large-XXXX)/mxbai-shaped
trap 'rm -rf "$(dirname "$FOLDER")"' EXIT

step cuda_tests 100 "$PYTHON" -m pytest -q -p no:randomly -p no:cacheprovider tests/test_cuda.py \
    "tests/test_int8.py::test_int8_is_refused_where_it_cannot_run"
step checkpoint 45 "$PYTHON" benchmarks/large_checkpoint.py "$FOLDER"
step gpu_table 200 "$PYTHON" benchmarks/large_model.py gpu "$FOLDER" "$STSB" --texts 2004 --repeats 3 --sample 256
MM2D_MODEL=$FOLDER step serve 100 "$PYTHON" benchmarks/serving.py --clients 64 --seconds 20 --sequential-seconds 8 \
    --texts-per-request 1 8 --server-cores 0
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed or ran out of time: ${failed[*]} (see $OUT)" >&2
    exit 1
fi
echo "done: $OUT"
