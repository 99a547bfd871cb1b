"""Retrieval by depth, same-depth and cross-depth, from one pass over documents and queries.

Cross-depth is the fast query path of an adapted model: documents indexed once at full depth,
queries encoded shallow. It only makes sense when a shallow depth lands in the full depth's space,
which is what the exit heads of `mm2d adapt` learn; a plain cut lands elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mm2d_integrations.core.encoder import Matryoshka2DEncoder
from mm2d_integrations.evaluation.datasets import BeirSet
from mm2d_integrations.evaluation.grid import evaluate_retrieval

__all__ = ["DepthScores", "evaluate_depths"]


@dataclass(frozen=True)
class DepthScores:
    """Retrieval metrics x100 at the encoder's native width, by query depth."""

    same_depth: dict[int, dict[str, float]]  # documents and queries at that depth
    cross_depth: dict[int, dict[str, float]]  # documents at the encoder's full depth, queries at that depth


def evaluate_depths(
    encoder: Matryoshka2DEncoder, dataset: BeirSet, layers: Sequence[int] | None = None, *, show_progress: bool = False
) -> DepthScores:
    """Every metric of `evaluate_retrieval`, same-depth and cross-depth, for each depth (default all),
    by depth: the grid's cross-depth cells at full width (at the encoder's own depth, both are one)."""
    width = encoder.max_dimensions
    result = evaluate_retrieval(encoder, dataset, layers, [width], cross_depth=True, show_progress=show_progress)
    assert result.cross_depth is not None
    same = {depth: {metric: cells[depth, width] for metric, cells in result.scores.items()} for depth in result.layers}
    crossed = {
        depth: {metric: cells[depth, width] for metric, cells in result.cross_depth.scores.items()}
        for depth in result.layers
        if depth < encoder.num_layers
    }
    return DepthScores(same_depth=same, cross_depth={**same, **crossed})
