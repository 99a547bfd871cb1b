"""The metrics, as BEIR and MTEB compute them (pytrec_eval, the trec_eval measures), for one query.

`relevance` maps corpus ids to graded judgments from the qrels; a judgment > 0 means relevant.
Every function returns a fraction in [0, 1]; the evaluation reports them x100.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mm2d_integrations.core.validation import install_hint

__all__ = ["TrecMeasure", "mrr_at_k", "ndcg_at_k", "recall_at_k", "spearman"]


def spearman(predicted: np.ndarray, gold: Sequence[float]) -> float:
    """Spearman rank correlation of predicted similarities with gold scores."""
    from scipy.stats import spearmanr  # scipy is the eval extra's, not a core dependency

    return float(spearmanr(predicted, gold).statistic)


def _pytrec_eval() -> Any:
    try:
        import pytrec_eval
    except ImportError as error:
        raise ImportError(install_hint("pytrec_eval", "eval")) from error
    return pytrec_eval


@dataclass(frozen=True)
class TrecMeasure:
    """A trec_eval measure of a ranking's top k: `measure(ranked, relevance, k)` for one query,
    `measure.of_each(rankings, judgments, k)` for many at once (one evaluator: trec_eval's setup
    costs more than scoring one query)."""

    name: str  # pytrec_eval's, without the cutoff

    def __call__(self, ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
        return float(self.of_each([ranked], [relevance], k)[0])

    def of_each(self, rankings: Sequence[Sequence[str]], judgments: Sequence[Mapping[str, int]], k: int) -> np.ndarray:
        """The measure of each ranking (0 for a query without relevant documents). Documents are given
        trec_eval as scores falling with the rank, so that its own order (score, then id) is the ranking's."""
        measure = self.name if self.name == "recip_rank" else f"{self.name}.{k}"
        qrels = {str(query): dict(relevance) for query, relevance in enumerate(judgments)}
        run = {str(query): {doc: float(-rank) for rank, doc in enumerate(ranked[:k])} for query, ranked in enumerate(rankings)}
        scores = _pytrec_eval().RelevanceEvaluator(qrels, {measure}).evaluate(run)
        key = measure.replace(".", "_")
        return np.array([scores.get(str(query), {}).get(key, 0.0) for query in range(len(rankings))])


ndcg_at_k = TrecMeasure("ndcg_cut")
"""trec_eval's ndcg_cut: the gain is the judgment itself (linear); the ideal ranking orders every
relevant judgment of the query, retrieved or not."""
recall_at_k = TrecMeasure("recall")
"""Relevant documents in the top k over all relevant documents of the query."""
mrr_at_k = TrecMeasure("recip_rank")
"""One over the rank of the first relevant document in the top k, 0 when there is none."""
