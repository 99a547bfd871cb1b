"""Retrieval by depth, same-depth and cross-depth, from one pass over documents and queries.

Cross-depth is the fast query path of an adapted model: documents indexed once at full depth,
queries encoded shallow. It only makes sense when a shallow depth lands in the full depth's space,
which is what the exit heads of `mm2d adapt` learn; a plain cut lands elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mm2d_integrations.encoder import Matryoshka2DEncoder
from mm2d_integrations.evaluation.datasets import BeirSet
from mm2d_integrations.evaluation.grid import grid_axes
from mm2d_integrations.evaluation.ranking import retrieval_scores

__all__ = ["DepthScores", "evaluate_depths"]


@dataclass(frozen=True)
class DepthScores:
    """Retrieval metrics x100 at the encoder's native width, by query depth."""

    same_depth: dict[int, dict[str, float]]  # documents and queries at that depth
    cross_depth: dict[int, dict[str, float]]  # documents at the encoder's full depth, queries at that depth


def evaluate_depths(
    encoder: Matryoshka2DEncoder, dataset: BeirSet, layers: Sequence[int] | None = None, *, show_progress: bool = False
) -> DepthScores:
    """Every metric of `evaluate_retrieval`, same-depth and cross-depth, for each depth (default all)."""
    depths, _ = grid_axes(encoder, layers, [encoder.max_dimensions])
    full = encoder.num_layers
    documents = encoder.encode_layerwise(
        dataset.documents, {*depths, full}, prompt=encoder.document_prompt, show_progress=show_progress
    )
    queries = encoder.encode_layerwise(dataset.queries, depths, prompt=encoder.query_prompt, show_progress=show_progress)
    position = {corpus_id: index for index, corpus_id in enumerate(dataset.corpus_ids)}
    own = np.array([position.get(query_id, -1) for query_id in dataset.query_ids])
    return DepthScores(
        same_depth={depth: retrieval_scores(queries[depth], documents[depth], dataset, own) for depth in depths},
        cross_depth={depth: retrieval_scores(queries[depth], documents[full], dataset, own) for depth in depths},
    )
