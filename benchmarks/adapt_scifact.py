"""Depth that keeps rankings where it counts: adapt on the SciFact abstracts alone, score the train claims.

Adapts all-MiniLM-L6-v2 on the 5,183 abstracts of BEIR SciFact (documents only: the claims are never
seen in training), then scores the 505 train claims at each depth, same-depth (queries and documents
cut alike) and cross-depth (queries shallow, documents at full depth), and STS Benchmark dev at each
depth, for: the plain cut, `mm2d adapt` as it comes (an exit layer at the middle depth, heads elsewhere),
heads alone (`--exit-layers none`), an exit layer at every depth scored (`--exit-layers` all of them), and
a 2D fine-tune of the whole backbone (`finetune`: sentence-transformers' trainer and its Matryoshka2dLoss
over a cosine distillation from the frozen original; needs `pip install datasets`), scored as a plain
cut of the fine-tuned model, with how far its full-depth vectors moved from the original's, and a
distilled student of the first L layers (`student`: an exit layer's training with all L layers
retrained, at each of --layers, default the middle depth), scored same-depth (student both sides),
cross-depth (student claims, the original's full-depth abstracts) and on STS dev.
Prints one row per method and depth with the share of full depth, and the adaptation's wall time.

Data: $MM2D_SCIFACT_DIR (default ../shared/data/scifact-train: corpus.jsonl, queries.jsonl,
qrels/train.tsv) and $MM2D_STSB_DIR/sts-dev.csv (default ../shared/data/stsb). Never copied here.

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/adapt_scifact.py [--methods plain default heads layer finetune student] [--layers 1 3] [--layer-epochs N]
       [--exit-layer-start last|own]
       [--finetune-epochs N] [--finetune-lr LR] [--finetune-weights FULL SHALLOWER] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.core.exit_heads import ExitHead
from mm2d_integrations.core.loading import shallow_view
from mm2d_integrations.core.runtime import bf16_supported
from mm2d_integrations.evaluation.cross_depth import evaluate_depths
from mm2d_integrations.evaluation.datasets import BeirSet, StsPairs, read_beir, read_sts
from mm2d_integrations.evaluation.grid import evaluate_sts
from mm2d_integrations.evaluation.metrics import spearman
from mm2d_integrations.evaluation.ranking import retrieval_scores
from mm2d_integrations.training.adapt import (
    EPOCHS,
    EXIT_LAYER_STARTS,
    HELD_OUT_SHARE,
    LAYER_EPOCHS,
    MAX_HELD_OUT,
    PSEUDO_QUERIES,
    TEMPERATURE,
    TOP_K,
    Training,
    _pooled_rows,
    _query_side,
    adapt,
    cut_pseudo_queries,
    fit_exit_layer,
    read_corpus,
)

SCIFACT = Path(os.environ.get("MM2D_SCIFACT_DIR", "../shared/data/scifact-train"))
STSB = Path(os.environ.get("MM2D_STSB_DIR", "../shared/data/stsb"))
# method -> adapt's exit_layers: none adapted (plain), adapt's default, none (heads), every depth (layer: --layers)
EXIT_LAYERS: dict[str, list[int] | None] = {"plain": [], "default": None, "heads": [], "layer": None}
METHODS = [*EXIT_LAYERS, "finetune", "student"]
FINETUNE_BATCH = 32
LAST_LAYER_WEIGHT = 4.0  # of full depth's distillation term, against drifting from the original (a pilot, 600 abstracts, 1 epoch at 1e-4: still 0.989 mean cosine)
PRIOR_LAYERS_WEIGHT = 1.0  # of the mean of the shallower depths' terms
COSINE_SAMPLE = 1_000  # abstracts whose full-depth vectors are compared with the original's


def _beyond_embeddings(layer_index: int) -> float:
    """AdaptiveLayerLoss's weight of a prior layer's loss: none for index 0, the embedding layer's output."""
    return float(layer_index > 0)


def finetune_2d(
    base: str, texts: list[str], out: Path, epochs: float, learning_rate: float, last_layer_weight: float = LAST_LAYER_WEIGHT,
    prior_layers_weight: float = PRIOR_LAYERS_WEIGHT, seed: int = 0,
) -> Path:
    """The whole backbone fine-tuned with sentence-transformers' trainer: Matryoshka2dLoss (every layer
    and the widths 384/256/128/64 each step) over a cosine distillation to the frozen original's
    full-depth vectors of the texts and of pseudo-queries cut from them (batches of one kind each, so that
    short queries are not padded to an abstract's length)."""
    from datasets import Dataset  # type: ignore[import-untyped, import-not-found, unused-ignore]  # pip install datasets
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses

    teacher = Matryoshka2DEncoder(base)
    queries, _ = cut_pseudo_queries(texts, PSEUDO_QUERIES, seed)
    train = {
        "documents": Dataset.from_dict({"text": texts, "label": teacher.encode_documents(texts).tolist()}),
        "queries": Dataset.from_dict({"text": queries, "label": teacher.encode_queries(queries).tolist()}),
    }
    model = SentenceTransformer(base, device="cpu")
    width = teacher.max_dimensions
    loss = losses.Matryoshka2dLoss(
        model, losses.EmbedDistillLoss(model, distance_metric="cosine"), matryoshka_dims=[d for d in (width, 256, 128, 64) if d <= width],
        n_layers_per_step=-1, n_dims_per_step=-1, last_layer_weight=last_layer_weight, prior_layers_weight=prior_layers_weight, layer_weighting=_beyond_embeddings,
    )
    arguments = SentenceTransformerTrainingArguments(
        output_dir=str(out.parent / f"{out.name}-trainer"), num_train_epochs=epochs, per_device_train_batch_size=FINETUNE_BATCH,
        learning_rate=learning_rate, warmup_steps=0.1, bf16=bf16_supported(teacher.device), use_cpu=True, save_strategy="no",
        report_to="none", logging_steps=50, seed=seed,
    )
    SentenceTransformerTrainer(model=model, args=arguments, train_dataset=train, loss=loss).train()
    model.save(str(out))
    return out


def full_depth_cosines(base: str, model: str, texts: list[str]) -> np.ndarray:
    """Cosine of each text's full-depth vector through `model` to the base model's (both unit length)."""
    return (Matryoshka2DEncoder(base).encode_documents(texts) * Matryoshka2DEncoder(model).encode_documents(texts)).sum(1)


def distill_student(
    teacher: Matryoshka2DEncoder, texts: list[str], depth: int, epochs: int, exit_layer_start: str = "last", seed: int = 0
) -> tuple[torch.nn.Module, ExitHead]:
    """The first `depth` layers retrained, with a linear head after pooling: an exit layer's training
    (`fit_exit_layer`: its losses, pseudo-queries, learning rates and held-out texts, its last layer
    started as `exit_layer_start` says) with every layer of the depth retrained instead of its last alone.
    Returns the student (a view of the teacher's embeddings and the retrained layers) and its head."""
    queries, sources = cut_pseudo_queries(texts, PSEUDO_QUERIES, seed)
    held_out = min(MAX_HELD_OUT, max(2, int(len(texts) * HELD_OUT_SHARE)))
    (rows,) = _pooled_rows(teacher, texts, queries, sources, [depth], held_out, seed, False, {}).values()
    training = Training("auto", ("cosine",), 4 * teacher.max_dimensions, EPOCHS, seed, TEMPERATURE, TOP_K)
    asked = _query_side(teacher, texts, queries, sources)[0]
    layers, head, _ = fit_exit_layer(
        teacher, depth, rows, texts, asked, training, epochs, retrained=depth, show_progress=True, exit_layer_start=exit_layer_start
    )
    loaded = teacher.loaded_model
    return shallow_view(loaded.model, loaded.stack, depth, layers), head


@torch.no_grad()
def student_vectors(teacher: Matryoshka2DEncoder, student: torch.nn.Module, head: ExitHead, texts: list[str], prompt: str) -> np.ndarray:
    """Unit vectors of `texts` through the student and its head."""
    return torch.nn.functional.normalize(head(teacher.pooled_through(student, texts, prompt)), dim=1).numpy()


def score_student(
    teacher: Matryoshka2DEncoder, student: torch.nn.Module, head: ExitHead, dataset: BeirSet, full_abstracts: np.ndarray, pairs: StsPairs
) -> dict[str, float]:
    """nDCG@10 same-depth (claims and abstracts through the student) and cross-depth (claims through it,
    `full_abstracts`: the teacher's full-depth vectors), and STS dev, x100."""
    own = dataset.own_documents()
    claims = student_vectors(teacher, student, head, dataset.queries, teacher.query_prompt)
    abstracts = student_vectors(teacher, student, head, dataset.documents, teacher.document_prompt)
    sentences, first, second = pairs.distinct()
    sts = student_vectors(teacher, student, head, sentences, teacher.document_prompt)
    return {
        "same": retrieval_scores(claims, abstracts, dataset, own)["nDCG@10"],
        "cross": retrieval_scores(claims, full_abstracts, dataset, own)["nDCG@10"],
        "sts": 100 * spearman((sts[first] * sts[second]).sum(1), pairs.scores),
    }


def student_rows(
    base: str, texts: list[str], depths: list[int], epochs: int, exit_layer_start: str, dataset: BeirSet, pairs: StsPairs
) -> dict[str, object]:
    """A student distilled at each depth, scored, printed; its training time."""
    teacher = Matryoshka2DEncoder(base)
    full_abstracts = teacher.encode_documents(dataset.documents)  # once: the reference's and every depth's cross-depth documents
    reference = retrieval_scores(teacher.encode_queries(dataset.queries), full_abstracts, dataset, dataset.own_documents())["nDCG@10"]
    (sts,) = evaluate_sts(teacher, pairs, [teacher.max_layers], [teacher.max_dimensions]).scores.values()
    full_sts = sts[teacher.max_layers, teacher.max_dimensions]
    rows, seconds = {}, {}
    for depth in depths:
        started = time.perf_counter()
        student, head = distill_student(teacher, texts, depth, epochs, exit_layer_start)
        seconds[depth] = time.perf_counter() - started
        rows[depth] = score_student(teacher, student, head, dataset, full_abstracts, pairs)
        same, cross, spearman_ = rows[depth]["same"], rows[depth]["cross"], rows[depth]["sts"]
        print(
            f"student L{depth}  nDCG@10 same {same:6.2f} ({100 * same / reference:5.1f}%)  cross {cross:6.2f} ({100 * cross / reference:5.1f}%)  "
            f"STS dev {spearman_:6.2f} ({100 * spearman_ / full_sts:5.1f}%)  distilled in {seconds[depth]:.0f} s",
            flush=True,
        )
    return {"adapt_seconds": sum(seconds.values()), "seconds_by_depth": seconds, "depths": rows}


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
    parser.add_argument("--methods", nargs="+", default=["plain", "default", "heads"], choices=METHODS)
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="depths to adapt and score (default every one)")
    parser.add_argument("--layer-epochs", type=int, default=LAYER_EPOCHS, help=f"of the exit layers (default {LAYER_EPOCHS})")
    parser.add_argument("--exit-layer-start", choices=EXIT_LAYER_STARTS, default="last", help="of the exit layers and the student's last layer (default last)")
    parser.add_argument("--finetune-epochs", type=float, default=1.0)
    parser.add_argument("--finetune-lr", type=float, default=1e-4)
    parser.add_argument("--finetune-weights", type=float, nargs=2, default=[LAST_LAYER_WEIGHT, PRIOR_LAYERS_WEIGHT], metavar=("FULL", "SHALLOWER"),
                        help="Matryoshka2dLoss's last_layer_weight and prior_layers_weight")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    base = default_model()
    full_depth = Matryoshka2DEncoder(base).max_layers
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        dataset = read_beir(train_split(SCIFACT, scratch))
        pairs = read_sts(STSB / "sts-dev.csv")
        texts = read_corpus(SCIFACT / "corpus.jsonl")
        print(f"scifact-train: {len(dataset.documents)} abstracts, {len(dataset.queries)} claims; STS dev: {len(pairs.scores)} pairs", flush=True)
        results = {}
        for method in args.methods:
            model, seconds, extra = base, 0.0, {}
            if method == "student":
                results[method] = student_rows(base, texts, args.layers or [full_depth // 2], args.layer_epochs, args.exit_layer_start, dataset, pairs)
                continue
            if method == "finetune":
                started = time.perf_counter()
                model = str(finetune_2d(base, texts, scratch / method, args.finetune_epochs, args.finetune_lr, *args.finetune_weights))
                seconds = time.perf_counter() - started
                cosines = full_depth_cosines(base, model, texts[:COSINE_SAMPLE])
                extra = {"full_depth_cosine_min": float(cosines.min()), "full_depth_cosine_mean": float(cosines.mean())}
                print(f"finetune full-depth cosine to the original over {len(cosines)} abstracts: min {cosines.min():.5f} mean {cosines.mean():.5f}", flush=True)
            elif method != "plain":
                started = time.perf_counter()
                exit_layers = (args.layers or list(range(1, full_depth))) if method == "layer" else EXIT_LAYERS[method]
                adapted = adapt(
                    base, texts, scratch / method, layers=args.layers, exit_layers=exit_layers, layer_epochs=args.layer_epochs,
                    exit_layer_start=args.exit_layer_start,
                )
                model = str(adapted.out)
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
            results[method] = {"adapt_seconds": seconds, "depths": rows, **extra}
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
