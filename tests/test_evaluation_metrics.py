from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mm2d_integrations.evaluation.metrics import mrr_at_k, ndcg_at_k, recall_at_k, spearman
from mm2d_integrations.evaluation.ranking import top_k

# One query with graded judgments: d5 (3) is never retrieved, d9 is judged not relevant (0).
RANKED = ["d3", "d1", "d7", "d2", "d9"]
RELEVANCE = {"d1": 2, "d2": 1, "d5": 3, "d9": 0}
LOG2_3 = math.log2(3)


def test_ndcg_by_hand() -> None:
    # DCG@3 = 0/log2(2) + 2/log2(3) + 0/log2(4) = 1.26186; ideal@3 = 3/log2(2) + 2/log2(3) + 1/log2(4) = 4.76186
    assert ndcg_at_k(RANKED, RELEVANCE, 3) == pytest.approx((2 / LOG2_3) / (3 + 2 / LOG2_3 + 0.5))
    assert ndcg_at_k(RANKED, RELEVANCE, 3) == pytest.approx(0.264993, abs=1e-6)
    # DCG@5 adds d2 at rank 4: 1/log2(5); the ideal has only three relevant documents
    assert ndcg_at_k(RANKED, RELEVANCE, 5) == pytest.approx((2 / LOG2_3 + 1 / math.log2(5)) / (3 + 2 / LOG2_3 + 0.5))
    assert ndcg_at_k(RANKED, RELEVANCE, 1) == 0.0
    assert ndcg_at_k(["d5", "d1", "d2"], RELEVANCE, 10) == pytest.approx(1.0)


def test_recall_by_hand() -> None:
    # relevant: d1, d2, d5 (d9 is judged 0)
    assert recall_at_k(RANKED, RELEVANCE, 1) == 0.0
    assert recall_at_k(RANKED, RELEVANCE, 3) == pytest.approx(1 / 3)
    assert recall_at_k(RANKED, RELEVANCE, 100) == pytest.approx(2 / 3)


def test_mrr_by_hand() -> None:
    assert mrr_at_k(RANKED, RELEVANCE, 10) == 0.5  # first relevant (d1) at rank 2
    assert mrr_at_k(RANKED, RELEVANCE, 1) == 0.0
    assert mrr_at_k(["d9", "d7", "d3", "d2"], RELEVANCE, 10) == 0.25


def test_spearman_by_hand() -> None:
    # ranks 1 2 3 4 vs 1 3 2 4: 1 - 6 * (0 + 1 + 1 + 0) / (4 * (16 - 1)) = 0.8
    assert spearman(np.array([0.1, 0.2, 0.3, 0.4]), [1.0, 3.0, 2.0, 4.0]) == pytest.approx(0.8)
    assert spearman(np.array([3.0, 2.0, 1.0]), [0.0, 1.0, 2.0]) == pytest.approx(-1.0)


def test_top_k_ranks_by_dot_product_and_never_returns_the_query_itself() -> None:
    documents = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]], np.float32)
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    # query 0 scores 1, .8, 0, .6; query 1 is document 2 itself and scores 0, .6, (1), .8
    np.testing.assert_array_equal(top_k(queries, documents, 3, np.array([-1, 2])), [[0, 1, 3], [3, 1, 0]])
    np.testing.assert_array_equal(top_k(queries, documents, 100, np.array([-1, -1]))[:, :2], [[0, 1], [2, 3]])


# Today's figures on the sample set (benchmarks/retrieval_sets.py sample: 126 chunks, 49 questions, graded
# judgments), ranked by the packaged MiniLM at two cuts whose scores hold no near-tie (gaps > 1e-6)
# that another CPU's rounding could swap: retrieval_scores, then each metric at cutoffs 1 and 3 (x100).
SAMPLE_SET_FIGURES = {
    (3, 128): ({"nDCG@10": 46.775632374, "Recall@100": 99.659863946, "MRR@10": 67.295918367},
               {1: (42.857142857, 10.869776482, 53.061224490), 3: (40.751831170, 23.731778426, 62.585034014)}),
    (1, 32): ({"nDCG@10": 12.271752340, "Recall@100": 94.669582119, "MRR@10": 17.090217039},
              {1: (1.020408163, 0.408163265, 2.040816327), 3: (5.027062894, 3.658892128, 8.503401361)}),
}


def test_the_sample_set_figures_stay_as_they_were(minilm_path: Path, tmp_path: Path) -> None:
    from benchmarks.retrieval_sets import build_sample
    from mm2d_integrations import Matryoshka2DEncoder, truncate_dimensions
    from mm2d_integrations.evaluation.datasets import read_beir
    from mm2d_integrations.evaluation.ranking import retrieval_scores

    dataset = read_beir(build_sample(tmp_path / "sample"))
    encoder = Matryoshka2DEncoder(minilm_path)
    documents, queries = encoder.encode_layerwise(dataset.documents, [3, 1]), encoder.encode_layerwise(dataset.queries, [3, 1])
    own = np.full(len(dataset.queries), -1)
    judgments = [dataset.qrels[query_id] for query_id in dataset.query_ids]
    for (layers, dimensions), (named, by_cutoff) in SAMPLE_SET_FIGURES.items():
        cut_documents, cut_queries = truncate_dimensions(documents[layers], dimensions), truncate_dimensions(queries[layers], dimensions)
        assert retrieval_scores(cut_queries, cut_documents, dataset, own) == pytest.approx(named, abs=1e-6)
        ranked = [[dataset.corpus_ids[index] for index in row] for row in top_k(cut_queries, cut_documents, 100, own)]
        for cutoff, figures in by_cutoff.items():
            measured = [100 * np.mean([metric(ranking, relevance, cutoff) for ranking, relevance in zip(ranked, judgments)])
                        for metric in (ndcg_at_k, recall_at_k, mrr_at_k)]
            assert measured == pytest.approx(figures, abs=1e-6), (layers, dimensions, cutoff)
