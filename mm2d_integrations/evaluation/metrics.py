"""The metrics, as BEIR and MTEB define them (pytrec_eval), for one query or one list of pairs.

`relevance` maps corpus ids to graded judgments from the qrels; a judgment > 0 means relevant.
Every function returns a fraction in [0, 1]; the evaluation reports them x100.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["mrr_at_k", "ndcg_at_k", "recall_at_k", "spearman"]


def spearman(predicted: np.ndarray, gold: Sequence[float]) -> float:
    """Spearman rank correlation of predicted similarities with gold scores."""
    from scipy.stats import spearmanr  # scipy is the eval extra's, not a core dependency

    return float(spearmanr(predicted, gold).statistic)


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """Gain is the judgment itself (linear, as pytrec_eval's ndcg_cut); the ideal ranking orders
    every relevant judgment of the query, retrieved or not."""
    discounts = [1 / math.log2(rank + 2) for rank in range(k)]
    dcg = sum(max(relevance.get(doc, 0), 0) * discount for doc, discount in zip(ranked[:k], discounts))
    ideal = sorted((rel for rel in relevance.values() if rel > 0), reverse=True)[:k]
    idcg = sum(rel * discount for rel, discount in zip(ideal, discounts))
    return dcg / idcg if idcg else 0.0


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """Relevant documents in the top k over all relevant documents of the query."""
    relevant = sum(rel > 0 for rel in relevance.values())
    found = sum(relevance.get(doc, 0) > 0 for doc in ranked[:k])
    return found / relevant if relevant else 0.0


def mrr_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """One over the rank of the first relevant document in the top k, 0 when there is none."""
    return next((1 / rank for rank, doc in enumerate(ranked[:k], 1) if relevance.get(doc, 0) > 0), 0.0)
