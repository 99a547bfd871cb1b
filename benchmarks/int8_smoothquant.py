"""Why int8 needs per-token activation scales: `compute_precision="int8"` against the same SmoothQuant
int8 layers with one activation scale per batch (what ONNX Runtime's and torch's dynamic quantisation
do), on quality (STS dev) and speed, fused (torch.compile) and not.

    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python benchmarks/int8_smoothquant.py STSB_DIR

The probe behind docs/performance.md, "int8"; `mm2d_integrations/core/int8.py` is what ships.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from performance import best_of, mixed_corpus, model_path, print_throughput  # noqa: E402

from mm2d_integrations import Matryoshka2DEncoder, int8  # noqa: E402
from mm2d_integrations.evaluation.datasets import read_sts  # noqa: E402
from mm2d_integrations.evaluation.metrics import spearman  # noqa: E402


def per_tensor_product(x: torch.Tensor, inv_smooth: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`int8._product` with one activation scale for the whole batch."""
    x = x * inv_smooth
    scale = x.abs().amax().clamp(min=1e-8) / 127.0
    return torch._int_mm(torch.round(x / scale).to(torch.int8), weight).float() * (scale * weight_scale) + bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stsb", type=Path, help="folder with sts-dev.csv and sts-train.csv")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    path = model_path()
    texts = mixed_corpus(args.stsb)
    dev = read_sts(args.stsb / "sts-dev.csv")
    distinct = list(dict.fromkeys(dev.first + dev.second))
    reference = Matryoshka2DEncoder(path)
    truth = reference.encode_documents(distinct)
    index = {text: row for row, text in enumerate(distinct)}

    def sts(vectors: np.ndarray) -> float:
        return 100 * spearman((vectors[[index[t] for t in dev.first]] * vectors[[index[t] for t in dev.second]]).sum(1), dev.scores)

    variants = {"int8, per-token (shipped, fused)": None, "int8, per-token, unfused": int8._product, "int8, per-tensor, unfused": per_tensor_product}
    encoders = {}
    print(f"quality on {len(distinct)} distinct STS dev sentences; float32 STS dev Spearman x100 {sts(truth):.2f}")
    for name, product in variants.items():
        int8._fused.pop("product", None)
        if product is not None:
            int8._fused["product"] = product
        # its own loaded model (another cache_folder, unused for a local folder), so its own quantised copy
        encoder = Matryoshka2DEncoder(path, compute_precision="int8", cache_folder=tempfile.mkdtemp(prefix="mm2d-int8-"))
        vectors = encoder.encode_documents(distinct)
        cosines = (vectors * truth).sum(1)
        print(f"{name}: min cosine to float32 {cosines.min():.4f}, mean {cosines.mean():.5f}, STS dev Spearman x100 {sts(vectors):.2f}")
        encoders[name] = encoder
    theirs = SentenceTransformer(path, device="cpu")
    timings = best_of(
        {"sentence-transformers float32": lambda: theirs.encode(texts, normalize_embeddings=True),
         "ours float32": lambda: reference.encode_documents(texts),
         **{name: (lambda encoder=encoder: encoder.encode_documents(texts)) for name, encoder in encoders.items()}},
        args.repeats,
    )
    print_throughput(timings, len(texts), args.repeats)


if __name__ == "__main__":
    main()
