"""`mm2d eval retrieval --funnel`: the funnel simulated exactly in the grid's pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mm2d_integrations.cli import main
from mm2d_integrations.evaluation.datasets import BeirSet, StsPairs
from mm2d_integrations.evaluation.funnel_choice import auto_shortlist_dims, choose_funnel, evaluate_funnel
from mm2d_integrations.evaluation.metrics import ndcg_at_k
from mm2d_integrations.retrieval.funnel import Funnel
from tests.test_evaluation_datasets import write_sts_retrieval_set


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray, BeirSet]:
    """300 documents in 40 clusters, 50 queries near one document each; document d0 is query q0's own."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((40, 48))
    documents = centres[rng.integers(0, 40, 300)] + 0.6 * rng.standard_normal((300, 48))
    targets = rng.integers(1, 300, 50)
    queries = documents[targets] + 0.5 * rng.standard_normal((50, 48))
    corpus_ids = ["q0", *(f"d{index}" for index in range(1, 300))]
    query_ids = [f"q{index}" for index in range(50)]
    qrels = {query_id: {corpus_ids[target]: 2, corpus_ids[(target % 299) + 1]: 1} for query_id, target in zip(query_ids, targets)}
    dataset = BeirSet(corpus_ids, [""] * 300, query_ids, [""] * 50, qrels)
    return queries.astype(np.float32), documents.astype(np.float32), dataset


def _by_sorting(queries: np.ndarray, documents: np.ndarray, dataset: BeirSet, shortlist: int, factor: int, full: int) -> tuple[float, float]:
    """nDCG@10 x100 and recall@10 x100 against exact search, by full sorts of normalised prefixes, q0 never finding d0."""

    def unit(rows: np.ndarray, width: int) -> np.ndarray:
        kept = rows[:, :width]
        return kept / np.linalg.norm(kept, axis=1, keepdims=True)

    ndcgs, recalls = [], []
    for row, query_id in enumerate(dataset.query_ids):
        allowed = [index for index in range(len(documents)) if dataset.corpus_ids[index] != query_id]
        full_scores = unit(documents, full) @ unit(queries, full)[row]
        short_scores = unit(documents, shortlist) @ unit(queries, shortlist)[row]
        exact = sorted(allowed, key=lambda index: -full_scores[index])[:10]
        candidates = sorted(allowed, key=lambda index: -short_scores[index])[: 10 * factor]
        found = sorted(candidates, key=lambda index: -full_scores[index])[:10]
        ndcgs.append(ndcg_at_k([dataset.corpus_ids[index] for index in found], dataset.qrels[query_id], 10))
        recalls.append(len(set(found) & set(exact)) / 10)
    return 100 * float(np.mean(ndcgs)), 100 * float(np.mean(recalls))


@pytest.mark.parametrize(("shortlist", "factor", "full"), [(8, 2, 48), (4, 1, 32), (16, 5, 48)])
def test_the_funnel_equals_a_brute_force_by_full_sorts(vectors, shortlist: int, factor: int, full: int) -> None:
    queries, documents, dataset = vectors
    own = np.array([0] + [-1] * 49)
    result = evaluate_funnel(queries, documents, dataset, own, Funnel(shortlist, factor), 3, full)
    ndcg, recall = _by_sorting(queries, documents, dataset, shortlist, factor, full)
    assert result.ndcg == pytest.approx(ndcg, abs=1e-9) and result.recall == pytest.approx(recall, abs=1e-9)
    assert (result.layers, result.dimensions, result.searched_bytes, result.exact_searched_bytes) == (3, full, 4 * shortlist, 4 * full)
    assert 0 < result.seconds_per_query and 0 < result.exact_seconds_per_query
    assert recall < 100  # the prefix shortlist does miss documents here, so the comparison means something


@pytest.mark.parametrize("own_first", [-1, 0])
def test_a_shortlist_as_large_as_the_corpus_is_exact_search(vectors, own_first: int) -> None:
    """Also when q0 owns d0, its nearest document: a shortlist of the whole corpus holds d0 too."""
    queries, documents, dataset = vectors
    queries = np.vstack([documents[:1], queries[1:]])
    own = np.array([own_first] + [-1] * 49)
    result = evaluate_funnel(queries, documents, dataset, own, Funnel(4, 30), 1, 48)
    assert result.recall == 100 and result.ndcg == pytest.approx(result.exact_ndcg, abs=1e-9)


@pytest.fixture(scope="module")
def beir_folder(tmp_path_factory: pytest.TempPathFactory, graded_pairs: StsPairs) -> Path:
    return write_sts_retrieval_set(tmp_path_factory.mktemp("beir"), graded_pairs, 60)


def test_cli_reports_each_funnel_and_writes_it_as_a_results_row(
    minilm_path: Path, beir_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["eval", "retrieval", str(beir_folder), "--model", str(minilm_path), "--layers", "6", "2", "--dims", "384", "64"]
    assert main([*arguments, "--funnel", "64x10", "--funnel", "32x1", "--json", str(tmp_path / "grid.json")]) == 0
    out = capsys.readouterr().out
    assert "funnel SxF: the top 10 x F by the first S dimensions (exact scan), re-ranked by all" in out
    assert "     6     64x10    384" in out and "     2      32x1    384" in out and "256 (1536)" in out
    written = json.loads((tmp_path / "grid.json").read_text(encoding="utf-8"))
    cells = {(row["layers"], row["dimensions"]): row["score"] for row in written["results"] if "funnel" not in row}
    funnels = [row for row in written["results"] if "funnel" in row]
    assert len(cells) == 4 and [list(row) for row in funnels] == [["layers", "dimensions", "score", "funnel"]] * 4
    assert [(row["layers"], row["dimensions"], row["funnel"]) for row in funnels] == [
        (6, 384, "64x10"), (6, 384, "32x1"), (2, 384, "64x10"), (2, 384, "32x1")
    ]
    assert all(type(row["score"]) is float for row in funnels)
    # 10 x 10 candidates of a corpus of under 100 documents: every document is re-ranked, as in single-stage search
    assert funnels[0]["score"] == pytest.approx(cells[6, 384], abs=1e-9) and funnels[2]["score"] == pytest.approx(cells[2, 384], abs=1e-9)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--funnel", "64"], "a funnel is SHORTLIST_DIMSxFACTOR, for example 64x10, got '64'"),
        (["--funnel", "64x10", "--funnel", "ax2"], "a funnel is SHORTLIST_DIMSxFACTOR, for example 64x10, got 'ax2'"),
        (["--funnel", "64x0"], "shortlist_factor must be an int in [1, 1048576], got 0"),
        (["--funnel", "384x10"], "shortlist_dims must be an int in [1, 383], got 384"),
        (["--dims", "128", "32", "--funnel", "128x10"], "shortlist_dims must be an int in [1, 127], got 128"),
    ],
)
def test_bad_funnels_exit_2_naming_the_valid_form(
    minilm_path: Path, beir_folder: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    assert main(["eval", "retrieval", str(beir_folder), "--model", str(minilm_path), *arguments]) == 2
    assert message in capsys.readouterr().err


def test_auto_chooses_the_narrowest_prefix_then_the_smallest_factor_within_one_percent(vectors) -> None:
    queries, documents, dataset = vectors
    own = np.array([0] + [-1] * 49)
    choice = choose_funnel(queries, documents, dataset, own, 3, 48, [4, 8, 16], factors=(1, 2, 5, 30))
    exact, _ = _by_sorting(queries, documents, dataset, 48, 30, 48)  # a shortlist of the whole corpus: exact search
    assert choice.exact_ndcg == pytest.approx(exact, abs=1e-9)
    for funnel, score in choice.tried.items():  # each as the funnel by full sorts measures it
        assert score == pytest.approx(_by_sorting(queries, documents, dataset, funnel.shortlist_dims, funnel.shortlist_factor, 48)[0], abs=1e-9)
    *before, last = choice.tried
    assert choice.chosen == last and choice.exact_ndcg - choice.tried[last] <= 0.01 * choice.exact_ndcg
    assert all(choice.exact_ndcg - choice.tried[funnel] > 0.01 * choice.exact_ndcg for funnel in before)
    assert list(choice.tried) == sorted(choice.tried, key=lambda funnel: (funnel.shortlist_dims, funnel.shortlist_factor))
    assert len(before) >= 2  # the narrowest ones did lose more than 1% here: the search means something
    none = choose_funnel(queries, documents, dataset, own, 3, 48, [4], factors=(1,), max_loss=0.0)
    assert none.chosen is None and list(none.tried) == [Funnel(4, 1)]
    assert auto_shortlist_dims(384, [384, 128, 96]) == [16, 32, 64, 96, 128, 256] and auto_shortlist_dims(48) == [16, 32]


def test_cli_funnel_auto_prints_the_flags_to_index_and_ask_with(
    minilm_path: Path, beir_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["eval", "retrieval", str(beir_folder), "--model", str(minilm_path), "--layers", "6", "--dims", "384"]
    assert main([*arguments, "--funnel", "auto", "--json", str(tmp_path / "grid.json")]) == 0
    out = capsys.readouterr().out
    auto = json.loads((tmp_path / "grid.json").read_text(encoding="utf-8"))["funnel_auto"]
    chosen = Funnel.parse(auto["chosen"])
    assert f"chosen: {chosen}\n  index with: mm2d index DIR --shortlist-dims {chosen.shortlist_dims}\n" in out
    assert f"  ask with:   mm2d ask QUESTION --funnel {chosen}\n" in out
    assert auto["tried"][-1]["funnel"] == str(chosen) and auto["tried"][0]["funnel"] == "16x1"
    assert auto["exact"] - auto["tried"][-1]["score"] <= 0.01 * auto["exact"]
    assert main([*arguments, "--funnel", "auto", "--funnel", "16x1"]) == 0  # auto beside named funnels
    assert "     6      16x1    384" in capsys.readouterr().out
