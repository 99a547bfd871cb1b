"""Depth that keeps rankings where it counts: adapt on the SciFact abstracts alone, score the train claims.

Adapts all-MiniLM-L6-v2 on the 5,183 abstracts of BEIR SciFact (documents only: the claims are never
seen in training), then scores the 505 train claims at each depth, same-depth (queries and documents
cut alike) and cross-depth (queries shallow, documents at full depth), and STS Benchmark dev at each
depth, for: the plain cut, `mm2d adapt` as it comes (an exit layer at the middle depth, heads elsewhere),
heads alone (`--exit-layers none`) and an exit layer at every depth scored (`--exit-layers` all of them).
Prints one row per method and depth with the share of full depth, and the adaptation's wall time.

Data: $MM2D_SCIFACT_DIR (default ../shared/data/scifact-train: corpus.jsonl, queries.jsonl,
qrels/train.tsv) and $MM2D_STSB_DIR/sts-dev.csv (default ../shared/data/stsb). Never copied here.

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/adapt_scifact.py [--methods plain default heads layer] [--layers 1 3] [--layer-epochs N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.evaluation.cross_depth import evaluate_depths
from mm2d_integrations.evaluation.datasets import read_beir, read_sts
from mm2d_integrations.evaluation.grid import evaluate_sts
from mm2d_integrations.training.adapt import LAYER_EPOCHS, adapt, read_corpus

SCIFACT = Path(os.environ.get("MM2D_SCIFACT_DIR", "../shared/data/scifact-train"))
STSB = Path(os.environ.get("MM2D_STSB_DIR", "../shared/data/stsb"))
# method -> adapt's exit_layers: none adapted (plain), adapt's default, none (heads), every depth (layer: --layers)
EXIT_LAYERS: dict[str, list[int] | None] = {"plain": [], "default": None, "heads": [], "layer": None}


def train_split(folder: Path, scratch: Path) -> Path:
    """The set as read_beir reads it (qrels/test.tsv), its train judgments standing in."""
    view = scratch / "scifact-train"
    (view / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (view / name).symlink_to((folder / name).resolve())
    (view / "qrels" / "test.tsv").symlink_to((folder / "qrels" / "train.tsv").resolve())
    return view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["plain", "default", "heads"], choices=list(EXIT_LAYERS))
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="depths to adapt and score (default every one)")
    parser.add_argument("--layer-epochs", type=int, default=LAYER_EPOCHS, help=f"of the exit layers (default {LAYER_EPOCHS})")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    base = default_model()
    full = Matryoshka2DEncoder(base).max_layers
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        dataset = read_beir(train_split(SCIFACT, scratch))
        pairs = read_sts(STSB / "sts-dev.csv")
        texts = read_corpus(SCIFACT / "corpus.jsonl")
        print(f"scifact-train: {len(dataset.documents)} abstracts, {len(dataset.queries)} claims; STS dev: {len(pairs.scores)} pairs", flush=True)
        results = {}
        for method in args.methods:
            model, seconds = base, 0.0
            if method != "plain":
                started = time.perf_counter()
                exit_layers = (args.layers or list(range(1, full))) if method == "layer" else EXIT_LAYERS[method]
                model = str(adapt(base, texts, scratch / method, layers=args.layers, exit_layers=exit_layers, layer_epochs=args.layer_epochs).out)
                seconds = time.perf_counter() - started
            encoder = Matryoshka2DEncoder(model)
            depths = sorted({*(args.layers or range(1, encoder.max_layers)), encoder.max_layers})
            retrieval = evaluate_depths(encoder, dataset, depths)
            (sts,) = evaluate_sts(encoder, pairs, depths, [encoder.max_dimensions]).scores.values()
            full, full_sts = retrieval.same_depth[encoder.max_layers]["nDCG@10"], sts[encoder.max_layers, encoder.max_dimensions]
            rows = {}
            for depth in depths:
                same, cross = retrieval.same_depth[depth]["nDCG@10"], retrieval.cross_depth[depth]["nDCG@10"]
                spearman = sts[depth, encoder.max_dimensions]
                rows[depth] = {"same": same, "cross": cross, "sts": spearman}
                print(
                    f"{method:6s} L{depth}  nDCG@10 same {same:6.2f} ({100 * same / full:5.1f}%)  cross {cross:6.2f} ({100 * cross / full:5.1f}%)  "
                    f"STS dev {spearman:6.2f} ({100 * spearman / full_sts:5.1f}%)",
                    flush=True,
                )
            print(f"{method:6s} adapt wall {seconds:.0f} s", flush=True)
            results[method] = {"adapt_seconds": seconds, "depths": rows}
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
