"""Funnel retrieval measured in the grid's pass: shortlist by a prefix, re-rank by the full vectors.

The shortlist here is the exact top `10 x factor` by the prefix (a scan of the whole corpus), so
the numbers carry no approximate-search error; an approximate index over the prefix, such as the
HNSW of `funnel.FunnelIndex`, can only miss candidates it finds. `benchmarks/funnel.py` measures
that one in Chroma.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from mm2d_integrations.core.encoder import truncate_dimensions
from mm2d_integrations.evaluation.datasets import BeirSet
from mm2d_integrations.evaluation.metrics import ndcg_at_k
from mm2d_integrations.evaluation.ranking import mean_score, top_k
from mm2d_integrations.retrieval.funnel import Funnel, rerank

__all__ = ["AUTO_FACTORS", "FUNNEL_K", "MAX_AUTO_LOSS", "FunnelChoice", "FunnelResult", "auto_shortlist_dims", "choose_funnel", "evaluate_funnel"]

FUNNEL_K = 10  # the funnel serves nDCG@10, the primary metric
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class FunnelResult:
    """A funnel against single-stage exact search over the full vectors, on the same queries."""

    funnel: Funnel
    layers: int
    dimensions: int  # the full vectors': what re-ranks, and what single-stage search uses
    ndcg: float  # nDCG@10 x100 of the funnel's top 10
    exact_ndcg: float  # nDCG@10 x100 of single-stage exact search
    recall: float  # x100: the share of single-stage search's top 10 that the funnel's top 10 holds
    seconds_per_query: float  # median of the funnel's search, query vector given
    exact_seconds_per_query: float  # median of single-stage exact search, timed query by query beside it

    @property
    def searched_bytes(self) -> int:
        """Bytes per vector of what the search scans: the prefix (the full vectors are read for candidates only)."""
        return FLOAT32_BYTES * self.funnel.shortlist_dims

    @property
    def exact_searched_bytes(self) -> int:
        return FLOAT32_BYTES * self.dimensions


def evaluate_funnel(
    queries: np.ndarray, documents: np.ndarray, dataset: BeirSet, own: np.ndarray, funnel: Funnel, layers: int, dimensions: int
) -> FunnelResult:
    """`queries` and `documents`: one depth's vectors, at least `dimensions` wide; `own[i]` is the
    document never retrieved for query i (see `ranking.top_k`). Each query is searched both ways in turn,
    so that other load on the machine weighs on both timings alike."""
    full_queries, full_documents = truncate_dimensions(queries, dimensions), truncate_dimensions(documents, dimensions)
    short_queries = truncate_dimensions(queries, funnel.shortlist_dims)
    short_documents = truncate_dimensions(documents, funnel.shortlist_dims)
    seconds = np.empty((len(queries), 2))
    found_ids, exact_ids, recall = [], [], []
    for row in range(len(dataset.query_ids)):
        skip = own[row : row + 1]
        started = time.perf_counter()
        exact = top_k(full_queries[row : row + 1], full_documents, FUNNEL_K, skip)[0]
        middle = time.perf_counter()
        candidates = top_k(short_queries[row : row + 1], short_documents, FUNNEL_K * funnel.shortlist_factor, skip)[0]
        candidates = candidates[candidates != skip[0]]  # a shortlist of the whole corpus holds it too, to be re-scored
        order, _ = rerank(full_queries[row], full_documents[candidates], FUNNEL_K)
        found = candidates[order]
        seconds[row] = time.perf_counter() - middle, middle - started
        found_ids.append([dataset.corpus_ids[index] for index in found])
        exact_ids.append([dataset.corpus_ids[index] for index in exact])
        recall.append(len(set(found) & set(exact)) / len(exact))
    funnel_seconds, exact_seconds = np.median(seconds, axis=0)
    return FunnelResult(
        funnel, layers, dimensions, mean_score(ndcg_at_k, found_ids, dataset, FUNNEL_K), mean_score(ndcg_at_k, exact_ids, dataset, FUNNEL_K),
        100 * float(np.mean(recall)), float(funnel_seconds), float(exact_seconds),
    )


AUTO_FACTORS = (1, 2, 3, 5, 10, 20, 30, 50)
AUTO_MIN_DIMS = 16
MAX_AUTO_LOSS = 0.01  # nDCG@10 within 1% of single-stage search over the full vectors


@dataclass(frozen=True)
class FunnelChoice:
    """The narrowest funnel whose nDCG@10 is within `max_loss` of single-stage search, and every one tried."""

    layers: int
    dimensions: int  # the full vectors'
    exact_ndcg: float  # x100, single-stage exact search over the full vectors
    tried: dict[Funnel, float]  # funnel -> nDCG@10 x100, narrowest prefix first, then smallest factor
    chosen: Funnel | None  # None: no funnel tried keeps nDCG@10 within max_loss
    max_loss: float = MAX_AUTO_LOSS


def auto_shortlist_dims(dimensions: int, widths: Sequence[int] = ()) -> list[int]:
    """The prefixes tried: powers of two from 16, and the evaluated widths, below the full vectors' width."""
    powers = [1 << exponent for exponent in range(AUTO_MIN_DIMS.bit_length() - 1, dimensions.bit_length())]
    return sorted({width for width in (*powers, *widths) if width < dimensions})


def choose_funnel(
    queries: np.ndarray,
    documents: np.ndarray,
    dataset: BeirSet,
    own: np.ndarray,
    layers: int,
    dimensions: int,
    shortlist_dims: Sequence[int],
    factors: Sequence[int] = AUTO_FACTORS,
    max_loss: float = MAX_AUTO_LOSS,
) -> FunnelChoice:
    """Try each prefix (narrowest first) with each factor (smallest first), exact shortlists as in
    `evaluate_funnel`; the first within `max_loss` of single-stage nDCG@10 is chosen. Each prefix's
    shortlist is ranked once at the largest factor: a smaller factor's is its beginning."""
    full_queries, full_documents = truncate_dimensions(queries, dimensions), truncate_dimensions(documents, dimensions)

    def ndcg(found: Iterable[np.ndarray]) -> float:
        return mean_score(ndcg_at_k, [[dataset.corpus_ids[index] for index in row] for row in found], dataset, FUNNEL_K)

    exact = ndcg(top_k(full_queries, full_documents, FUNNEL_K, own))
    tried: dict[Funnel, float] = {}
    for width in shortlist_dims:
        ranked = top_k(truncate_dimensions(queries, width), truncate_dimensions(documents, width), FUNNEL_K * max(factors), own)
        for factor in sorted(factors):
            found = []
            for row, skip in enumerate(own):
                candidates = ranked[row, : FUNNEL_K * factor]
                candidates = candidates[candidates != skip]
                order, _ = rerank(full_queries[row], full_documents[candidates], FUNNEL_K)
                found.append(candidates[order])
            funnel = Funnel(width, factor)
            tried[funnel] = ndcg(found)
            if exact - tried[funnel] <= max_loss * exact:
                return FunnelChoice(layers, dimensions, exact, tried, funnel, max_loss)
    return FunnelChoice(layers, dimensions, exact, tried, None, max_loss)
