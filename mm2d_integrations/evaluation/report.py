"""A grid result as text tables, as JSON and as a heatmap."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import numpy as np

from mm2d_integrations.evaluation.funnel_choice import FunnelChoice
from mm2d_integrations.evaluation.grid import Cell, CrossDepth, GridResult

__all__ = ["change", "format_report", "funnel_choice_lines", "save_heatmap", "to_json"]


def change(result: GridResult, metric: str, layers: int, dimensions: int) -> float:
    """The cell's change in % against the reference cell (NaN when the reference scores 0)."""
    return _against_reference(result, metric, result.scores[metric][layers, dimensions])


def _against_reference(result: GridResult, metric: str, score: float) -> float:
    reference = result.scores[metric][result.reference]
    return 100 * (score - reference) / abs(reference) if reference else math.nan


def format_report(result: GridResult) -> str:
    """One table per metric like the model authors' (rows: layers; columns: dimensions; each cell the
    score x100 and its change against the reference), then encoding throughput per depth."""
    layers, dimensions = result.reference
    lines = [
        f"model: {result.model} ({result.native[0]} layers x {result.native[1]} dimensions native)",
        f"encoding: {result.texts} texts in {result.encode_seconds:.1f} s "
        f"({_rate(result.texts, result.encode_seconds)} texts/s), one pass for every depth",
        f"evaluation: {result.seconds:.1f} s in all",
    ]
    if result.trained_pairs:
        lines.append("trained for (layers, dimensions): " + ", ".join(f"({layers}, {dims})" for layers, dims in result.trained_pairs))
    for metric in result.scores:
        lines += [
            "",
            f"{result.task} {metric} x100 by layers (rows) and dimensions (columns), "
            f"change against {layers} layers x {dimensions} dimensions",
        ]
        lines += _table(result, metric, result.scores[metric])
    if result.cross_depth is not None:
        lines += _cross_depth_tables(result, result.cross_depth)
    lines += ["", "encoding throughput per depth*", f"{'layers':>6}  texts/s"]
    lines += [f"{depth:>6}  {_rate(result.texts, result.layer_seconds[depth]):>7}" for depth in result.layers]
    lines.append("* of an encoder cut to that depth, measured in the pass: its time less the time in deeper layers")
    if result.funnels:
        lines += ["", *_funnel_table(result)]
    if result.funnel_choice is not None:
        lines += ["", *funnel_choice_lines(result.funnel_choice)]
    return "\n".join(lines)


def _funnel_table(result: GridResult) -> list[str]:
    """Each funnel against single-stage exact search over the full vectors, measured query by query."""
    lines = [
        "funnel SxF: the top 10 x F by the first S dimensions (exact scan), re-ranked by all; "
        "(in brackets) single-stage exact search over all dimensions",
        f"{'layers':>6}  {'funnel':>8}  {'dims':>5}  {'nDCG@10':>18}  {'recall@10 vs exact':>18}  "
        f"{'ms/query':>15}  {'bytes/vector searched':>21}",
    ]
    for funnel in result.funnels:
        ndcg = f"{funnel.ndcg:.2f} ({funnel.exact_ndcg:.2f})"
        milliseconds = f"{1000 * funnel.seconds_per_query:.3f} ({1000 * funnel.exact_seconds_per_query:.3f})"
        searched = f"{funnel.searched_bytes} ({funnel.exact_searched_bytes})"
        lines.append(
            f"{funnel.layers:>6}  {funnel.funnel!s:>8}  {funnel.dimensions:>5}  {ndcg:>18}  {funnel.recall:>18.2f}  "
            f"{milliseconds:>15}  {searched:>21}"
        )
    lines.append("recall@10 vs exact: the share of single-stage search's top 10 in the funnel's; ms/query: median, query vector given")
    return lines


def funnel_choice_lines(choice: FunnelChoice) -> list[str]:
    """The funnels tried for `--funnel auto`, and the flags to index and ask with."""
    lines = [
        f"funnel auto: the narrowest prefix, then the smallest factor, whose nDCG@10 is within {100 * choice.max_loss:g}% of "
        f"single-stage search over all {choice.dimensions} dimensions ({choice.exact_ndcg:.2f}), {choice.layers} layers, exact shortlists",
        f"{'funnel':>8}  {'nDCG@10':>7}  {'change':>7}",
    ]
    lines += [
        f"{funnel!s:>8}  {score:>7.2f}  {100 * (score - choice.exact_ndcg) / choice.exact_ndcg:>+6.2f}%" for funnel, score in choice.tried.items()
    ]
    if choice.chosen is None:
        lines.append("no funnel tried keeps nDCG@10 within the limit: search all dimensions (no --funnel)")
    else:
        lines += [
            f"chosen: {choice.chosen}",
            f"  index with: mm2d index DIR --shortlist-dims {choice.chosen.shortlist_dims}",
            f"  ask with:   mm2d ask QUESTION --funnel {choice.chosen}",
            "(an HNSW shortlist can miss what this exact one finds: check in Chroma with benchmarks/funnel.py --funnel "
            f"{choice.chosen})",
        ]
    return lines


def _cross_depth_tables(result: GridResult, crossed: CrossDepth) -> list[str]:
    """Per metric: documents at full depth, queries at each shallower depth (rows)."""
    layers, dimensions = result.reference
    lines = []
    for metric, cells in crossed.scores.items():
        lines += [
            "",
            f"cross-depth {result.task} {metric} x100: documents at {crossed.document_layers} layers, queries at "
            f"the layers of each row, by dimensions (columns), change against {layers} layers x {dimensions} dimensions",
        ]
        lines += _table(result, metric, cells, "queries") if cells else ["(no depth below the documents' was evaluated)"]
    return lines


def _table(result: GridResult, metric: str, scores: dict[Cell, float], rows_name: str = "layers") -> list[str]:
    """Rows by layers, deepest first; columns by dimensions; each cell its score and change against the reference."""
    cells = {cell: f"{score:.2f} ({_against_reference(result, metric, score):+.1f}%)" for cell, score in scores.items()}
    width, label = max(len(cell) for cell in cells.values()), max(6, len(rows_name))
    header = f"{rows_name:>{label}}" + "".join(f"  {dimensions:>{width}}" for dimensions in result.dimensions)
    rows = [
        f"{layers:>{label}}" + "".join(f"  {cells[layers, dimensions]:>{width}}" for dimensions in result.dimensions)
        for layers in sorted({layers for layers, _ in scores}, reverse=True)
    ]
    return [header] + rows


def _rate(texts: int, seconds: float) -> str:
    return f"{texts / seconds:.0f}" if seconds > 0 else "n/a"


def to_json(result: GridResult) -> dict[str, Any]:
    """{"model", "task", "metric", "results": [{"layers", "dimensions", "score"}], "seconds"}; score is
    the primary metric x100. A funnel's row adds "funnel": "64x10"; its dimensions are the full vectors'.
    A cross-depth row adds "query_layers": its "layers" are the documents' depth. `--funnel auto` adds "funnel_auto"."""
    crossed = result.cross_depth
    return {
        "model": result.model,
        "task": result.task,
        "metric": result.metric,
        "results": [
            {"layers": layers, "dimensions": dimensions, "score": score}
            for (layers, dimensions), score in result.scores[result.metric].items()
        ]
        + [
            {"layers": funnel.layers, "dimensions": funnel.dimensions, "score": funnel.ndcg, "funnel": str(funnel.funnel)}
            for funnel in result.funnels
        ]
        + (
            [
                {"layers": crossed.document_layers, "query_layers": query_layers, "dimensions": dimensions, "score": score}
                for (query_layers, dimensions), score in crossed.scores[result.metric].items()
            ]
            if crossed
            else []
        ),
        "seconds": result.seconds,
        **({"funnel_auto": _choice_json(result.funnel_choice)} if result.funnel_choice else {}),
    }


def _choice_json(choice: FunnelChoice) -> dict[str, Any]:
    """`--funnel auto` in --json: what was tried (nDCG@10 x100) and the funnel chosen (null: none)."""
    return {
        "layers": choice.layers, "dimensions": choice.dimensions, "exact": choice.exact_ndcg,
        "tried": [{"funnel": str(funnel), "score": score} for funnel, score in choice.tried.items()],
        "chosen": str(choice.chosen) if choice.chosen else None,
    }


def save_heatmap(result: GridResult, path: str | Path) -> None:
    """The primary metric of every cell as a PNG heatmap, each cell labelled with score and change."""
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure  # matplotlib is the eval extra's, not a core dependency

    layers, dimensions = result.layers, result.dimensions
    scores = np.array([[result.scores[result.metric][row, column] for column in dimensions] for row in layers])
    figure = Figure(figsize=(2.2 + 1.1 * len(dimensions), 1.6 + 0.5 * len(layers)), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(scores, cmap="viridis", aspect="auto")
    norm = cast(Normalize, image.norm)  # imshow's default; matplotlib types it as the abstract Norm, which takes arrays only
    axes.set_xticks(range(len(dimensions)), [str(width) for width in dimensions])
    axes.set_yticks(range(len(layers)), [str(depth) for depth in layers])
    axes.set_xlabel("dimensions")
    axes.set_ylabel("layers")
    axes.set_title(f"{'/'.join(Path(result.model).parts[-2:])}\n{result.task} {result.metric} x100", fontsize=10)
    for row, depth in enumerate(layers):
        for column, width in enumerate(dimensions):
            score = scores[row, column]
            axes.text(
                column,
                row,
                f"{score:.1f}\n{change(result, result.metric, depth, width):+.1f}%",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm(score) < 0.5 else "black",
            )
    figure.colorbar(image, ax=axes)
    figure.savefig(path, format="png", dpi=150)
