"""The depth x dimensions grid from one forward pass per text.

Every requested depth comes out of the same pass (`encode_layerwise`) and every width is a slice of
it, so the whole grid costs about what its deepest row alone costs, and each cell equals what an
encoder cut to that depth and width gives. Retrieval can also score cross-depth cells from the same
pass: documents at the encoder's depth, queries shallower (`query_num_layers`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mm2d_integrations.core.encoder import Matryoshka2DEncoder, truncate_dimensions
from mm2d_integrations.core.validation import check_int_in_range
from mm2d_integrations.evaluation.datasets import BeirSet, StsPairs
from mm2d_integrations.evaluation.funnel_choice import FunnelChoice, FunnelResult, auto_shortlist_dims, choose_funnel, evaluate_funnel
from mm2d_integrations.evaluation.metrics import spearman
from mm2d_integrations.evaluation.ranking import RETRIEVAL_METRICS, retrieval_scores
from mm2d_integrations.evaluation.timing import LayerClock
from mm2d_integrations.retrieval.funnel import Funnel

__all__ = ["STS_METRIC", "Cell", "CrossDepth", "GridResult", "evaluate_retrieval", "evaluate_sts", "grid_axes"]

Cell = tuple[int, int]  # (layers, dimensions)
STS_METRIC = "cosine Spearman"


@dataclass(frozen=True)
class CrossDepth:
    """Retrieval with documents at `document_layers` and queries at each shallower depth evaluated:
    what an encoder with that `query_num_layers` gives on a collection indexed at `document_layers`."""

    document_layers: int
    scores: dict[str, dict[Cell, float]]  # metric -> (query layers, dimensions) -> score x100; the primary metric first


@dataclass(frozen=True)
class GridResult:
    """Scores x100 of every (layers, dimensions) cell, and what encoding cost."""

    model: str
    task: str
    scores: dict[str, dict[Cell, float]]  # metric -> cell -> score x100; the primary metric first
    native: Cell  # the checkpoint's full depth and width
    texts: int  # texts encoded in the pass
    encode_seconds: float  # the pass, every depth at once
    layer_seconds: dict[int, float]  # num_layers -> seconds an encoder cut there needs for the texts (LayerClock)
    seconds: float  # encoding and scoring; loading the model excluded
    funnels: list[FunnelResult] = field(default_factory=list)  # retrieval only: each funnel at each depth
    cross_depth: CrossDepth | None = None  # retrieval only, when asked for
    trained_pairs: tuple[Cell, ...] = ()  # the (layers, dimensions) the model was trained for, where its preset says
    funnel_choice: FunnelChoice | None = None  # retrieval only, with auto_funnel

    @property
    def metric(self) -> str:
        return next(iter(self.scores))

    @property
    def layers(self) -> list[int]:
        """Deepest first."""
        return sorted({layers for layers, _ in self.scores[self.metric]}, reverse=True)

    @property
    def dimensions(self) -> list[int]:
        """Widest first."""
        return sorted({dimensions for _, dimensions in self.scores[self.metric]}, reverse=True)

    @property
    def reference(self) -> Cell:
        """The cell changes are measured against: native when evaluated, else the deepest and widest."""
        return self.native if self.native in self.scores[self.metric] else (self.layers[0], self.dimensions[0])


def grid_axes(
    encoder: Matryoshka2DEncoder, layers: Sequence[int] | None, dimensions: Sequence[int] | None
) -> tuple[list[int], list[int]]:
    """The depths and widths to evaluate, deepest and widest first. By default every depth of the
    encoder, and its native width then the powers of two below it down to 32."""
    if layers is None:
        depths = list(range(encoder.num_layers, 0, -1))
    else:
        depths = sorted({check_int_in_range("num_layers", depth, 1, encoder.max_layers) for depth in layers})[::-1]
    if not depths:
        raise ValueError(f"num_layers must name at least one depth in [1, {encoder.max_layers}]")
    if depths[0] > encoder.num_layers:
        raise ValueError(f"layers {depths[0]} is deeper than this encoder, cut to num_layers={encoder.num_layers}")
    native = encoder.max_dimensions
    if dimensions is None:
        widths = [native] + [1 << power for power in range(native.bit_length() - 1, 4, -1) if 1 << power < native]
    else:
        widths = sorted({check_int_in_range("dimensions", width, 1, native) for width in dimensions})[::-1]
    if not widths:
        raise ValueError(f"dimensions must name at least one width in [1, {native}]")
    return depths, widths


def evaluate_sts(
    encoder: Matryoshka2DEncoder,
    pairs: StsPairs,
    layers: Sequence[int] | None = None,
    dimensions: Sequence[int] | None = None,
    *,
    show_progress: bool = False,
) -> GridResult:
    """Cosine Spearman x100 of every cell; each distinct sentence is encoded once."""
    started = time.perf_counter()
    depths, widths = grid_axes(encoder, layers, dimensions)
    texts, first, second = pairs.distinct()
    with LayerClock(encoder) as clock:
        vectors = encoder.encode_layerwise(texts, depths, prompt=encoder.document_prompt, show_progress=show_progress)
    scores: dict[Cell, float] = {}
    for depth in depths:
        for width in widths:
            kept = truncate_dimensions(vectors[depth], width)
            scores[depth, width] = 100 * spearman((kept[first] * kept[second]).sum(1), pairs.scores)
    return _result(encoder, "sts", {STS_METRIC: scores}, depths, len(texts), clock, started)


def evaluate_retrieval(
    encoder: Matryoshka2DEncoder,
    dataset: BeirSet,
    layers: Sequence[int] | None = None,
    dimensions: Sequence[int] | None = None,
    *,
    funnels: Sequence[Funnel] = (),
    cross_depth: bool = False,
    auto_funnel: bool = False,
    show_progress: bool = False,
) -> GridResult:
    """nDCG@10, Recall@100 and MRR@10 x100 of every cell, ranking the whole corpus by exact cosine;
    each funnel at each depth, re-ranking by the widest width evaluated (see `evaluation.funnel`);
    with `auto_funnel`, the narrowest funnel that keeps nDCG@10 within 1% at the deepest depth (`choose_funnel`);
    with `cross_depth`, every cell of each depth below the encoder's again, documents at the encoder's depth."""
    started = time.perf_counter()
    depths, widths = grid_axes(encoder, layers, dimensions)
    funnels = [funnel.check(widths[0]) for funnel in funnels]
    full = encoder.num_layers
    texts = len(dataset.documents) + len(dataset.queries)
    with LayerClock(encoder) as clock:
        documents = encoder.encode_layerwise(
            dataset.documents, {*depths, full} if cross_depth else depths, prompt=encoder.document_prompt, show_progress=show_progress
        )
        queries = encoder.encode_layerwise(dataset.queries, depths, prompt=encoder.query_prompt, side="query", show_progress=show_progress)
    own = dataset.own_documents()
    scores = _retrieval_cells(queries, documents, dataset, own, depths, widths)
    measured = [
        evaluate_funnel(queries[depth], documents[depth], dataset, own, funnel, depth, widths[0])
        for depth in depths
        for funnel in funnels
    ]
    shallower = [depth for depth in depths if depth < full]
    crossed = CrossDepth(full, _retrieval_cells(queries, documents, dataset, own, shallower, widths, full)) if cross_depth else None
    deepest = max(depths)
    choice = (
        choose_funnel(queries[deepest], documents[deepest], dataset, own, deepest, widths[0], auto_shortlist_dims(widths[0], widths))
        if auto_funnel
        else None
    )
    return _result(encoder, "retrieval", scores, depths, texts, clock, started, measured, crossed, choice)


def _retrieval_cells(
    queries: dict[int, np.ndarray],
    documents: dict[int, np.ndarray],
    dataset: BeirSet,
    own: np.ndarray,
    depths: list[int],
    widths: list[int],
    document_depth: int | None = None,
) -> dict[str, dict[Cell, float]]:
    """Every metric of each (query depth, width), documents at `document_depth` (default: the query's depth)."""
    scores: dict[str, dict[Cell, float]] = {name: {} for name in RETRIEVAL_METRICS}
    for depth in depths:
        for width in widths:
            kept_queries = truncate_dimensions(queries[depth], width)
            kept_documents = truncate_dimensions(documents[depth if document_depth is None else document_depth], width)
            for name, score in retrieval_scores(kept_queries, kept_documents, dataset, own).items():
                scores[name][depth, width] = score
    return scores


def _result(
    encoder: Matryoshka2DEncoder,
    task: str,
    scores: dict[str, dict[Cell, float]],
    depths: list[int],
    texts: int,
    clock: LayerClock,
    started: float,
    funnels: list[FunnelResult] | None = None,
    cross_depth: CrossDepth | None = None,
    funnel_choice: FunnelChoice | None = None,
) -> GridResult:
    return GridResult(
        model=encoder.model_name,
        task=task,
        scores=scores,
        native=(encoder.max_layers, encoder.max_dimensions),
        texts=texts,
        encode_seconds=clock.seconds,
        layer_seconds={depth: clock.seconds_at(depth) for depth in depths},
        seconds=time.perf_counter() - started,
        funnels=funnels or [],
        cross_depth=cross_depth,
        trained_pairs=encoder.trained_pairs or (),
        funnel_choice=funnel_choice,
    )
