"""Acceptance of `mm2d adapt`, measured in one run, each adaptation with the options given (default:
`adapt`'s defaults) and, beside it, with the pointwise heads of before (`--baseline`: loss cosine, no
pseudo-queries), on the same sampled texts:

1. adapting on the distinct STS Benchmark train sentences (at most --max-texts of them) takes under
   5 minutes; the ratio to one full-depth encoding of the same sentences is printed beside it;
2. on STS dev, the adapted model keeps at least 93.8% of the full-depth Spearman at 3 layers and 88%
   at 1 layer (every depth is printed, before and after);
3. on each BEIR folder given, adapted on its documents only (never its queries), the adapted model
   keeps at least 80% of the full-depth nDCG@10 at 3 layers, same-depth and cross-depth (documents
   at full depth, queries at that depth); every depth is printed before and after;
4. full depth of the adapted folder is bit-identical to the base model;
and, for information, what a head adds to the time of encoding at its depth (plain cut vs adapted
cut, alternated, best of 3).

Usage: HF_HUB_OFFLINE=1 python benchmarks/adapt.py [--retrieval BEIR_DIR ...] [--layers 1 3] [--max-texts N]
       [--loss L] [--sides S] [--pseudo-queries N] [--no-baseline] [--no-sts] [--model M] [--work DIR] [--repeats N]
Build retrieval sets with benchmarks/retrieval_sets.py (stsb: from STS train + dev; sample: the
sample documents and questions). STS files come from $MM2D_STSB_DIR (default: the current folder),
the STS Benchmark's sts-train.csv and sts-dev.csv, which you download (see the README, "Tests").
Timings are wall-clock and CPU seconds of this process, best of --repeats (default 1: one
adaptation takes minutes).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.cli.adapt import format_adapt_report
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.evaluation.cross_depth import evaluate_depths
from mm2d_integrations.evaluation.datasets import read_beir, read_sts
from mm2d_integrations.evaluation.grid import STS_METRIC, evaluate_sts
from mm2d_integrations.training.adapt import HEAD_SIDES, LOSSES, MAX_TEXTS, PSEUDO_QUERIES, adapt

STSB = Path(os.environ.get("MM2D_STSB_DIR", "."))
MAX_ADAPT_SECONDS = 300.0
STS_TARGETS = {3: 0.938, 1: 0.88}  # depth -> share of full-depth Spearman
RETRIEVAL_TARGET = (3, 0.80)  # depth, share of full-depth nDCG@10, same-depth and cross-depth
BASELINE = {"loss": "cosine", "pseudo_queries": 0, "sides": "shared"}  # the pointwise heads of before
T = TypeVar("T")


def _timed(repeats: int, function: Callable[[], T]) -> tuple[float, float, T]:
    """Best wall-clock and best CPU seconds of `repeats` calls, and the last value."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        value = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), value


def _adapt_into(model: str, texts: list[str], out: Path, **options: Any) -> Any:
    shutil.rmtree(out, ignore_errors=True)
    return adapt(model, texts, out, **options)


def _share_line(name: str, scores: dict[int, float], full: float) -> str:
    cells = "  ".join(f"{scores[depth]:6.2f} ({100 * scores[depth] / full:5.1f}%)" for depth in sorted(scores, reverse=True))
    return f"  {name:<24}{cells}"


def _contenders(options: dict[str, Any], baseline: bool) -> dict[str, dict[str, Any]]:
    """The adaptations to run: with the options given, and with the pointwise heads of before beside them."""
    return {"adapted": options, **({"baseline (pointwise)": {**options, **BASELINE}} if baseline else {})}


def sts_part(model: str, work: Path, repeats: int, options: dict[str, Any], baseline: bool) -> tuple[bool, Path]:
    train = read_sts(STSB / "sts-train.csv")
    texts = _sampled(list(dict.fromkeys(train.first + train.second)), options)
    base = Matryoshka2DEncoder(model)
    encode_wall, encode_cpu, _ = _timed(repeats, lambda: base.encode_documents(texts))
    dev = read_sts(STSB / "sts-dev.csv")
    before = evaluate_sts(base, dev, dimensions=[base.max_dimensions]).scores[STS_METRIC]
    full = before[base.max_layers, base.max_dimensions]
    lines = [_share_line("plain cut", {depth: score for (depth, _), score in before.items()}, full)]
    passed = True
    for name, chosen in _contenders(options, baseline).items():
        out = work / f"sts-train-{name.split()[0]}"
        wall, cpu, report = _timed(repeats, lambda out=out, chosen=chosen: _adapt_into(model, texts, out, **chosen))
        print(f"{name}: {chosen}")
        print(format_adapt_report(report))
        print(f"adapting on {len(texts)} STS train sentences: {wall:.1f} s wall-clock, {cpu:.1f} s CPU "
              f"(target < {MAX_ADAPT_SECONDS:.0f} s); one full-depth encoding of them: {encode_wall:.1f} s wall, "
              f"{encode_cpu:.1f} s CPU; ratio {wall / encode_wall:.2f} wall, {cpu / encode_cpu:.2f} CPU")
        after = evaluate_sts(Matryoshka2DEncoder(out), dev, dimensions=[base.max_dimensions]).scores[STS_METRIC]
        lines.append(_share_line(name, {depth: score for (depth, _), score in after.items()}, full))
        if name == "adapted":
            adapted_folder, passed = out, wall < MAX_ADAPT_SECONDS
            for depth, share in STS_TARGETS.items():
                if (depth, base.max_dimensions) in after and depth in report.depths:
                    kept = after[depth, base.max_dimensions] / full
                    passed &= kept >= share
                    lines.append(f"  {depth} layers keep {100 * kept:.1f}% (target >= {100 * share:.1f}%)")
    print(f"STS dev cosine Spearman x100 ({len(dev.scores)} pairs), % of full depth; layers "
          + " ".join(str(depth) for depth in range(base.max_layers, 0, -1)))
    print("\n".join(lines))
    return passed, adapted_folder


def _sampled(texts: list[str], options: dict[str, Any]) -> list[str]:
    """The texts every contender adapts on: the same sample, drawn once."""
    limit = options.get("max_texts")
    return random.Random(options.get("seed", 0)).sample(texts, limit) if limit and len(texts) > limit else texts


def retrieval_part(model: str, folder: Path, work: Path, options: dict[str, Any], baseline: bool) -> bool:
    dataset = read_beir(folder)
    documents = _sampled(dataset.documents, options)
    print(f"{folder}: {len(dataset.documents)} documents, {len(dataset.queries)} queries; adapted on {len(documents)} documents only")
    base = evaluate_depths(Matryoshka2DEncoder(model), dataset)
    full_depth = max(base.same_depth)
    full = base.same_depth[full_depth]["nDCG@10"]
    rows = [("plain cut, same-depth", base.same_depth), ("plain cut, cross-depth", base.cross_depth)]
    passed = True
    for name, chosen in _contenders(options, baseline).items():
        out = work / f"{folder.name}-{name.split()[0]}"
        report = _adapt_into(model, documents, out, **chosen)
        print(f"{name}: {chosen}")
        print(format_adapt_report(report))
        adapted = evaluate_depths(Matryoshka2DEncoder(out), dataset)
        rows += [(f"{name}, same-depth", adapted.same_depth), (f"{name}, cross-depth", adapted.cross_depth)]
        depth, share = RETRIEVAL_TARGET
        same, cross = (scores[depth]["nDCG@10"] / full for scores in (adapted.same_depth, adapted.cross_depth))
        print(f"  {name}: {depth} layers keep {100 * same:.1f}% same-depth, {100 * cross:.1f}% cross-depth (target >= {100 * share:.0f}%)")
        if name == "adapted":
            passed = same >= share and cross >= share
    print("nDCG@10 x100, % of full depth; layers " + " ".join(str(depth) for depth in sorted(base.same_depth, reverse=True)))
    for name, scores in rows:
        print(_share_line(name, {depth: metrics["nDCG@10"] for depth, metrics in scores.items()}, full))
    return passed


def check_full_depth(model: str, adapted: Path) -> bool:
    texts = read_sts(STSB / "sts-dev.csv").first[:256]
    same = np.array_equal(Matryoshka2DEncoder(model).encode_documents(texts), Matryoshka2DEncoder(adapted).encode_documents(texts))
    print(f"full depth of the adapted folder bit-identical to the base model on {len(texts)} texts: {same}")
    return same


def head_overhead(model: str, adapted: Path, depths: tuple[int, ...] = (1, 3), repeats: int = 3) -> None:
    texts = read_sts(STSB / "sts-dev.csv").first
    for depth in depths:
        encoders = {"plain cut": Matryoshka2DEncoder(model, num_layers=depth), "adapted": Matryoshka2DEncoder(adapted, num_layers=depth)}
        best = {name: (float("inf"), float("inf")) for name in encoders}
        for _ in range(repeats):  # alternated, so that load on the machine weighs on both alike
            for name, encoder in encoders.items():
                wall, cpu, _ = _timed(1, lambda encoder=encoder: encoder.encode_documents(texts))
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
        (plain_wall, plain_cpu), (head_wall, head_cpu) = best.values()
        print(f"encoding {len(texts)} texts at {depth} layers: plain cut {plain_wall:.2f} s wall / {plain_cpu:.2f} s CPU, "
              f"with its head {head_wall:.2f} / {head_cpu:.2f}; ratio {head_wall / plain_wall:.3f} wall, {head_cpu / plain_cpu:.3f} CPU")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrieval", type=Path, nargs="*", default=[], help="BEIR folders (benchmarks/retrieval_sets.py)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--work", type=Path, default=None, help="where the adapted folders go (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="depths adapted (default: every depth below full)")
    parser.add_argument("--max-texts", type=int, default=MAX_TEXTS, help=f"texts sampled for each adaptation (default {MAX_TEXTS})")
    parser.add_argument("--loss", choices=LOSSES, default="cosine")
    parser.add_argument("--sides", choices=HEAD_SIDES, default="shared")
    parser.add_argument("--pseudo-queries", type=int, default=PSEUDO_QUERIES)
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True, help="also adapt with the pointwise heads of before (no pseudo-queries)")
    parser.add_argument("--sts", action=argparse.BooleanOptionalAction, default=True, help="the STS parts (1, 2, 4 and the head's cost)")
    args = parser.parse_args()
    model = args.model or default_model()
    work = args.work or Path(tempfile.mkdtemp(prefix="mm2d-adapt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    options = {"layers": args.layers, "max_texts": args.max_texts, "loss": args.loss, "sides": args.sides, "pseudo_queries": args.pseudo_queries}
    print(f"model {model}; adapted folders in {work}; options {options}; load average {os.getloadavg()[0]:.2f}")
    passed = True
    if args.sts:
        passed, sts_folder = sts_part(model, work, args.repeats, options, args.baseline)
        passed &= check_full_depth(model, sts_folder)
        head_overhead(model, sts_folder, tuple(depth for depth in (1, 3) if args.layers is None or depth in args.layers))
    for folder in args.retrieval:
        passed &= retrieval_part(model, folder, work, options, args.baseline)
    print(f"load average {os.getloadavg()[0]:.2f}")
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
