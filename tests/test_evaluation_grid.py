from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from mm2d_integrations import Matryoshka2DEncoder, truncate_dimensions
from mm2d_integrations.evaluation.datasets import StsPairs, read_beir
from mm2d_integrations.evaluation.grid import evaluate_retrieval, evaluate_sts, grid_axes
from mm2d_integrations.evaluation.ranking import RETRIEVAL_METRICS
from mm2d_integrations.evaluation.timing import LayerClock
from tests.test_evaluation_datasets import write_sts_retrieval_set
from tests.tiny_models import build_tiny_model

DIMENSIONS = [384, 256, 128, 64, 32]


@pytest.fixture(scope="module")
def encoder(minilm_path: Path) -> Matryoshka2DEncoder:
    return Matryoshka2DEncoder(minilm_path)


def test_default_axes_are_every_depth_and_native_then_powers_of_two(
    encoder: Matryoshka2DEncoder, tmp_path: Path, minilm_path: Path
) -> None:
    assert grid_axes(encoder, None, None) == ([6, 5, 4, 3, 2, 1], DIMENSIONS)
    assert grid_axes(encoder, [2, 6, 2], [32, 384]) == ([6, 2], [384, 32])
    build_tiny_model(tmp_path, "bert", minilm_path)  # 4 layers, 32 dimensions
    assert grid_axes(Matryoshka2DEncoder(tmp_path), None, None) == ([4, 3, 2, 1], [32])


@pytest.mark.parametrize(
    ("layers", "dimensions", "message"),
    [
        ([0, 3], None, r"layers must be an int in \[1, 6\], got 0"),
        ([7], None, r"layers must be an int in \[1, 6\], got 7"),
        ([], None, r"layers must name at least one depth in \[1, 6\]"),
        (None, [385], r"dimensions must be an int in \[1, 384\], got 385"),
        (None, [], r"dimensions must name at least one width in \[1, 384\]"),
    ],
)
def test_bad_axes_name_the_valid_range(
    encoder: Matryoshka2DEncoder, layers: list[int] | None, dimensions: list[int] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        grid_axes(encoder, layers, dimensions)


def test_a_depth_beyond_a_cut_encoder_is_refused(minilm_path: Path) -> None:
    with pytest.raises(ValueError, match="layers 5 is deeper than this encoder, cut to num_layers=3"):
        grid_axes(Matryoshka2DEncoder(minilm_path, num_layers=3), [1, 5], None)


def test_sts_grid_equals_separately_cut_runs(encoder: Matryoshka2DEncoder, minilm_path: Path, graded_pairs: StsPairs) -> None:
    """Each depth is encoded again by an encoder cut there, then truncated to each width (as an
    encoder with those `dimensions` does); benchmarks/eval_grid.py also runs one encoder per cell."""
    result = evaluate_sts(encoder, graded_pairs)
    assert (result.task, result.metric, result.dimensions) == ("sts", "cosine Spearman", DIMENSIONS)
    assert result.layers == [6, 5, 4, 3, 2, 1]
    assert result.texts == len(set(graded_pairs.first + graded_pairs.second)) and result.native == (6, 384)
    for depth in range(1, 7):
        cut = Matryoshka2DEncoder(minilm_path, num_layers=depth)
        first, second = cut.encode_documents(graded_pairs.first), cut.encode_documents(graded_pairs.second)
        for width in DIMENSIONS:
            cosines = (truncate_dimensions(first, width) * truncate_dimensions(second, width)).sum(1)
            expected = 100 * spearmanr(cosines, graded_pairs.scores).statistic
            assert abs(result.scores["cosine Spearman"][depth, width] - expected) <= 0.01, (depth, width)


def _reference_metrics(queries: np.ndarray, documents: np.ndarray, dataset) -> dict[str, float]:
    """Rank the whole corpus by a full sort, drop each query's own id, score with the metrics."""
    totals = dict.fromkeys(RETRIEVAL_METRICS, 0.0)
    for query_id, scores in zip(dataset.query_ids, queries @ documents.T):
        ranked = [dataset.corpus_ids[i] for i in np.argsort(-scores, kind="stable") if dataset.corpus_ids[i] != query_id]
        for name, (metric, cutoff) in RETRIEVAL_METRICS.items():
            totals[name] += metric(ranked, dataset.qrels[query_id], cutoff)
    return {name: 100 * total / len(dataset.query_ids) for name, total in totals.items()}


def test_retrieval_grid_equals_separately_cut_runs(minilm_path: Path, tmp_path: Path, graded_pairs: StsPairs) -> None:
    dataset = read_beir(write_sts_retrieval_set(tmp_path, graded_pairs, 120))
    prompts = dict(query_prompt="query: ", document_prompt="passage: ")  # each side must get its own
    result = evaluate_retrieval(Matryoshka2DEncoder(minilm_path, **prompts), dataset, dimensions=[384, 64])
    assert (result.task, list(result.scores)) == ("retrieval", ["nDCG@10", "Recall@100", "MRR@10"])
    assert result.texts == len(dataset.documents) + len(dataset.queries)
    for depth in range(1, 7):
        cut = Matryoshka2DEncoder(minilm_path, num_layers=depth, **prompts)
        queries, documents = cut.encode_queries(dataset.queries), cut.encode_documents(dataset.documents)
        for width in (384, 64):
            expected = _reference_metrics(truncate_dimensions(queries, width), truncate_dimensions(documents, width), dataset)
            for name, score in expected.items():
                assert abs(result.scores[name][depth, width] - score) <= 0.01, (name, depth, width)
    assert 50 < result.scores["nDCG@10"][6, 384] < 100  # the set is easy but not trivial


def test_depth_clock_accounts_each_depth_and_leaves_no_hooks(encoder: Matryoshka2DEncoder, sentences: list[str]) -> None:
    layers = encoder._loaded.model.encoder.layer
    encoder.encode_layerwise(["transformers adds hooks of its own on the first pass"], [1, 6])
    hooks = [(dict(layer._forward_hooks), dict(layer._forward_pre_hooks)) for layer in layers]
    with LayerClock(encoder) as clock:
        encoder.encode_layerwise(sentences[:70], [1, 6])
    at_depth = [clock.seconds_at(depth) for depth in range(1, 7)]
    assert 0 < at_depth[0] and at_depth == sorted(at_depth) and at_depth[-1] == clock.seconds
    assert [(dict(layer._forward_hooks), dict(layer._forward_pre_hooks)) for layer in layers] == hooks
