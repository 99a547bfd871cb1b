"""Exact ranking of a corpus by dot product, and the retrieval metrics of one ranking."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mm2d_integrations.evaluation.datasets import BeirSet
from mm2d_integrations.evaluation.metrics import TrecMeasure, mrr_at_k, ndcg_at_k, recall_at_k

__all__ = ["RETRIEVAL_METRICS", "mean_score", "retrieval_scores", "top_k"]

RETRIEVAL_METRICS: dict[str, tuple[TrecMeasure, int]] = {
    "nDCG@10": (ndcg_at_k, 10),
    "Recall@100": (recall_at_k, 100),
    "MRR@10": (mrr_at_k, 10),
}
_SCORES_AT_ONCE = 1 << 24  # query x document scores held in memory while ranking


def retrieval_scores(
    queries: np.ndarray, documents: np.ndarray, dataset: BeirSet, own: np.ndarray
) -> dict[str, float]:
    """Every retrieval metric x100, averaged over the queries."""
    top = top_k(queries, documents, max(cutoff for _, cutoff in RETRIEVAL_METRICS.values()), own)
    rankings = [[dataset.corpus_ids[index] for index in row if index != skip] for row, skip in zip(top, own)]
    return {name: mean_score(metric, rankings, dataset, cutoff) for name, (metric, cutoff) in RETRIEVAL_METRICS.items()}


def mean_score(metric: TrecMeasure, rankings: Sequence[Sequence[str]], dataset: BeirSet, k: int) -> float:
    """`metric` at `k` x100, averaged over the dataset's queries (`rankings` in their order)."""
    judgments = [dataset.qrels[query_id] for query_id in dataset.query_ids]
    return 100 * float(np.mean(metric.of_each(rankings, judgments, k)))


def top_k(queries: np.ndarray, documents: np.ndarray, k: int, own: np.ndarray) -> np.ndarray:
    """Indices of each query's k best documents by dot product, best first.

    `own[i]` is the index of the document with query i's id (or -1): BEIR never retrieves it, as in
    sets whose queries are also documents it is a trivial match.
    """
    k = min(k, len(documents))
    rows = max(1, _SCORES_AT_ONCE // max(len(documents), 1))
    ranked = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), rows):
        scores = queries[start : start + rows] @ documents.T
        skip = own[start : start + rows]
        scores[np.flatnonzero(skip >= 0), skip[skip >= 0]] = -np.inf
        best = np.argpartition(scores, -k, axis=1)[:, -k:]
        order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
        ranked[start : start + rows] = np.take_along_axis(best, order, axis=1)
    return ranked
