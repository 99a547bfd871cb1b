"""Acceptance of `mm2d adapt`, measured in one run:

1. adapting on the distinct STS Benchmark train sentences (10,566) takes under 5 minutes; the ratio
   to one full-depth encoding of the same sentences, measured in the same run, is printed beside it;
2. on STS dev, the adapted model keeps at least 92% of the full-depth Spearman at 3 layers and 88%
   at 1 layer (every depth is printed, before and after);
3. on each BEIR folder given, adapted on its documents only (never its queries), the adapted model
   keeps at least 75% of the full-depth nDCG@10 at 3 layers; every depth is printed before and
   after, same-depth and cross-depth (documents at full depth, queries at that depth);
4. full depth of the adapted folder is bit-identical to the base model;
and, for information, what a head adds to the time of encoding at its depth (plain cut vs adapted
cut, alternated, best of 3).

Usage: HF_HUB_OFFLINE=1 python benchmarks/adapt.py [--retrieval BEIR_DIR ...] [--model M] [--work DIR] [--repeats N]
Build retrieval sets with benchmarks/retrieval_sets.py (stsb: from STS train + dev; sample: the
sample documents and questions). STS files come from $MM2D_STSB_DIR (default: the current folder),
the STS Benchmark's sts-train.csv and sts-dev.csv, which you download (see the README, "Tests").
Timings are wall-clock and CPU seconds of this process, best of --repeats (default 1: one
adaptation takes minutes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.adapt import adapt
from mm2d_integrations.cli.adapt import format_adapt_report
from mm2d_integrations.evaluation.cross_depth import evaluate_depths
from mm2d_integrations.evaluation.datasets import read_beir, read_sts
from mm2d_integrations.evaluation.grid import STS_METRIC, evaluate_sts
from mm2d_integrations.settings import default_model

STSB = Path(os.environ.get("MM2D_STSB_DIR", "."))
MAX_ADAPT_SECONDS = 300.0
STS_TARGETS = {3: 0.92, 1: 0.88}  # depth -> share of full-depth Spearman
RETRIEVAL_TARGET = (3, 0.75)  # depth, share of full-depth nDCG@10
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


def sts_part(model: str, work: Path, repeats: int) -> tuple[bool, Path]:
    train = read_sts(STSB / "sts-train.csv")
    texts = list(dict.fromkeys(train.first + train.second))
    base = Matryoshka2DEncoder(model)
    encode_wall, encode_cpu, _ = _timed(repeats, lambda: base.encode_documents(texts))
    out = work / "sts-train"
    wall, cpu, report = _timed(repeats, lambda: _adapt_into(model, texts, out))
    print(format_adapt_report(report))
    print(f"adapting on {len(texts)} STS train sentences: {wall:.1f} s wall-clock, {cpu:.1f} s CPU "
          f"(target < {MAX_ADAPT_SECONDS:.0f} s); one full-depth encoding of them: {encode_wall:.1f} s wall, "
          f"{encode_cpu:.1f} s CPU; ratio {wall / encode_wall:.2f} wall, {cpu / encode_cpu:.2f} CPU")
    dev = read_sts(STSB / "sts-dev.csv")
    before = evaluate_sts(base, dev, dimensions=[base.max_dimensions]).scores[STS_METRIC]
    after = evaluate_sts(Matryoshka2DEncoder(out), dev, dimensions=[base.max_dimensions]).scores[STS_METRIC]
    full = before[base.max_layers, base.max_dimensions]
    print(f"STS dev cosine Spearman x100 ({len(dev.scores)} pairs), % of full depth; layers "
          + " ".join(str(depth) for depth in range(base.max_layers, 0, -1)))
    print(_share_line("plain cut", {depth: score for (depth, _), score in before.items()}, full))
    print(_share_line("adapted", {depth: score for (depth, _), score in after.items()}, full))
    passed = wall < MAX_ADAPT_SECONDS
    for depth, share in STS_TARGETS.items():
        kept = after[depth, base.max_dimensions] / full
        passed &= kept >= share
        print(f"  {depth} layers keep {100 * kept:.1f}% (target >= {100 * share:.0f}%)")
    return passed, out


def retrieval_part(model: str, folder: Path, work: Path) -> bool:
    dataset = read_beir(folder)
    out = work / folder.name
    report = _adapt_into(model, dataset.documents, out)
    print(f"{folder}: {len(dataset.documents)} documents, {len(dataset.queries)} queries; adapted on the documents only")
    print(format_adapt_report(report))
    base = evaluate_depths(Matryoshka2DEncoder(model), dataset)
    adapted = evaluate_depths(Matryoshka2DEncoder(out), dataset)
    full_depth = max(base.same_depth)
    full = base.same_depth[full_depth]["nDCG@10"]
    print("nDCG@10 x100, % of full depth; layers " + " ".join(str(depth) for depth in sorted(base.same_depth, reverse=True)))
    for name, scores in (
        ("plain cut, same-depth", base.same_depth), ("plain cut, cross-depth", base.cross_depth),
        ("adapted, same-depth", adapted.same_depth), ("adapted, cross-depth", adapted.cross_depth),
    ):
        print(_share_line(name, {depth: metrics["nDCG@10"] for depth, metrics in scores.items()}, full))
    depth, share = RETRIEVAL_TARGET
    kept = adapted.same_depth[depth]["nDCG@10"] / full
    print(f"  {depth} layers keep {100 * kept:.1f}% same-depth, "
          f"{100 * adapted.cross_depth[depth]['nDCG@10'] / full:.1f}% cross-depth (target >= {100 * share:.0f}%)")
    return kept >= share


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
    args = parser.parse_args()
    model = args.model or default_model()
    work = args.work or Path(tempfile.mkdtemp(prefix="mm2d-adapt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"model {model}; adapted folders in {work}; load average {os.getloadavg()[0]:.2f}")
    passed, sts_folder = sts_part(model, work, args.repeats)
    passed &= check_full_depth(model, sts_folder)
    head_overhead(model, sts_folder)
    for folder in args.retrieval:
        passed &= retrieval_part(model, folder, work)
    print(f"load average {os.getloadavg()[0]:.2f}")
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
