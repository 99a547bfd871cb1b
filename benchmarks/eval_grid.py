"""Acceptance of `mm2d eval`, measured in one run on STS dev:

1. the full depth x dimensions grid takes at most 1.3x the time of evaluating full depth alone;
2. every cell equals a separately truncated run (an encoder cut to that depth and width) within 0.01.

Usage: HF_HUB_OFFLINE=1 python benchmarks/eval_grid.py [STS_DEV_FILE] [--model M] [--repeats N] [--threads T]
(STS_DEV_FILE defaults to sts-dev.csv in $MM2D_STSB_DIR, else in the current folder: the STS Benchmark's
dev split, which you download; see the README, "Tests".)
Timings alternate between the two evaluations and keep each one's best, so that load on the machine
weighs on both alike; the ratio is given in wall-clock time and in CPU time of this process (with
--threads 1, CPU time hardly moves when other processes share the cores). Per-depth throughput
measured inside the grid's pass is printed beside that of the separately cut encoders.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.evaluation.datasets import StsPairs, read_sts
from mm2d_integrations.evaluation.grid import STS_METRIC, GridResult, evaluate_sts
from mm2d_integrations.evaluation.metrics import spearman

STSB = Path(os.environ.get("MM2D_STSB_DIR", "."))
MAX_RATIO = 1.3
MAX_DIFFERENCE = 0.01
T = TypeVar("T")


def _timed(function: Callable[..., T], *args: Any) -> tuple[tuple[float, float], T]:
    """(wall-clock seconds, CPU seconds of this process) and the value."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = function(*args)
    return (time.perf_counter() - wall, time.process_time() - cpu), value


def _plain_full_depth(encoder: Matryoshka2DEncoder, pairs: StsPairs) -> float:
    """Full depth the way one would without `mm2d eval`: encode both sides, Spearman of the cosines."""
    first, second = encoder.encode_documents(pairs.first), encoder.encode_documents(pairs.second)
    return 100 * spearman((first * second).sum(1), pairs.scores)


def time_grid(encoder: Matryoshka2DEncoder, pairs: StsPairs, repeats: int) -> tuple[dict[str, float], GridResult]:
    """Ratios grid / full depth alone in wall-clock and CPU time (best of `repeats` each), and the grid."""
    native = [encoder.max_layers], [encoder.max_dimensions]
    encoder.encode_documents(pairs.first[:64])  # warm-up, outside every timing
    runs: dict[str, list[tuple[float, float]]] = {"full depth alone": [], "grid": [], "plain encode of both sides": []}
    for repeat in range(repeats):
        runs["full depth alone"].append(_timed(evaluate_sts, encoder, pairs, *native)[0])
        times, latest = _timed(evaluate_sts, encoder, pairs)
        if not runs["grid"] or times[0] < min(wall for wall, _ in runs["grid"]):
            result = latest  # the fastest pass's per-depth timings, the least disturbed by other processes
        runs["grid"].append(times)
        runs["plain encode of both sides"].append(_timed(_plain_full_depth, encoder, pairs)[0])
        line = ", ".join(f"{name} {times[-1][0]:.2f} / {times[-1][1]:.2f}" for name, times in runs.items())
        print(f"repeat {repeat + 1}, wall / CPU s: {line}")
    print(f"best of {repeats}: {native[0][0]} layers x {native[1][0]} dims alone vs the grid "
          f"({len(result.layers)} x {len(result.dimensions)} cells)")
    ratios = {}
    for index, clock in enumerate(("wall-clock", "CPU")):
        alone, grid, plain = (min(times[index] for times in timings) for timings in runs.values())
        ratios[clock] = grid / alone
        print(f"  {clock}: {alone:.2f} s vs {grid:.2f} s, ratio {ratios[clock]:.3f} (target <= {MAX_RATIO}); "
              f"grid / plain encode of both sides {grid / plain:.3f}")
    return ratios, result


def check_cells(model: str, pairs: StsPairs, result: GridResult) -> float:
    """The largest difference between a grid cell and an encoder cut to that depth and width."""
    print("every cell against a separately truncated run (one encoder per cell, all pairs):")
    differences = []
    for (depth, width), score in result.scores[STS_METRIC].items():
        cut = Matryoshka2DEncoder(model, num_layers=depth, dimensions=width)
        (seconds, _), separate = _timed(_plain_full_depth, cut, pairs)
        differences.append(abs(separate - score))
        rate = ""
        if width == result.native[1]:
            rate = (f"; texts/s: separate run {2 * len(pairs.scores) / seconds:.0f}, "
                    f"in the grid's pass {result.texts / result.layer_seconds[depth]:.0f}")
        print(f"  layers {depth} dims {width:>4}: grid {score:.4f} separate {separate:.4f} "
              f"difference {differences[-1]:.1e}{rate}")
    return max(differences)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sts_file", nargs="?", type=Path, default=STSB / "sts-dev.csv")
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or default_model()
    pairs = read_sts(args.sts_file)
    encoder = Matryoshka2DEncoder(model)
    print(f"{len(pairs.scores)} pairs from {args.sts_file}; {encoder}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    ratios, result = time_grid(encoder, pairs, args.repeats)
    print(f"load average {os.getloadavg()[0]:.2f}")
    worst = check_cells(model, pairs, result)
    print(f"max abs difference: {worst:.1e} (target <= {MAX_DIFFERENCE})")
    passed = ratios["wall-clock"] <= MAX_RATIO and worst <= MAX_DIFFERENCE
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
