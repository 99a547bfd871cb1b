from __future__ import annotations

import json
from pathlib import Path

import pytest

from mm2d_integrations.evaluation.datasets import StsPairs, read_beir, read_sts


def test_sts_benchmark_layout_with_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "sts.csv"
    path.write_text(
        "main-captions\tMSRvid\t2012test\t0000\t5.000\tA man is dancing.\tA man dances.\n"
        "\n"
        "main-news\theadlines\t2015\t0001\t1.25\tStocks fell.\tIt rained.\tsource-a\tsource-b\n",
        encoding="utf-8",
    )
    pairs = read_sts(path)
    assert pairs.scores == [5.0, 1.25]
    assert pairs.first == ["A man is dancing.", "Stocks fell."]
    assert pairs.second == ["A man dances.", "It rained."]


def test_plain_layout_with_a_header_and_quotes_kept(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text('score\ts1\ts2\n4.5\tShe said "hi".\tShe greeted us.\n0\ta\tb\n', encoding="utf-8")
    pairs = read_sts(path)
    assert (pairs.scores, pairs.first, pairs.second) == ([4.5, 0.0], ['She said "hi".', "a"], ["She greeted us.", "b"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("4.0\tonly one sentence\n", r"pairs.tsv:1: expected 3 or at least 7 tab-separated columns, got 2"),
        ("4.0\ta\tb\nhigh\tc\td\n", r"pairs.tsv:2: score 'high' is not a number"),
        ("score\ts1\ts2\n", "holds no scored sentence pairs"),
    ],
)
def test_bad_sts_files_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_sts(path)


def write_beir(folder: Path, corpus: list[dict], queries: list[dict], qrels: str) -> Path:
    """A BEIR-layout folder: corpus.jsonl, queries.jsonl, qrels/test.tsv."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(record) + "\n" for record in corpus), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(record) + "\n" for record in queries), encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return folder


CORPUS = [
    {"_id": "d1", "title": "Heat pumps", "text": "They move heat."},
    {"_id": "d2", "title": "", "text": "Solar panels make power."},
    {"_id": "d3", "text": "No title at all.", "metadata": {}},
]
QUERIES = [{"_id": "q1", "text": "what moves heat"}, {"_id": "q2", "text": "unjudged"}, {"_id": "q3", "text": "all zero"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td3\t1\nq3\td2\t0\n"


def test_beir_layout(tmp_path: Path) -> None:
    dataset = read_beir(write_beir(tmp_path, CORPUS, QUERIES, QRELS))
    assert dataset.corpus_ids == ["d1", "d2", "d3"]
    assert dataset.documents == ["Heat pumps They move heat.", "Solar panels make power.", "No title at all."]
    assert (dataset.query_ids, dataset.queries) == (["q1"], ["what moves heat"])  # q2, q3: nothing relevant to score
    assert dataset.qrels == {"q1": {"d1": 2, "d3": 1}}


@pytest.mark.parametrize(
    ("corpus", "queries", "qrels", "error", "message"),
    [
        ([{"_id": "d1"}], QUERIES, QRELS, ValueError, r"corpus.jsonl:1: 'text' must be a string, got None"),
        ([{"_id": 7, "text": "x"}], QUERIES, QRELS, ValueError, r"corpus.jsonl:1: '_id' must be a string, got 7"),
        (CORPUS + [CORPUS[0]], QUERIES, QRELS, ValueError, r"corpus.jsonl:4: _id 'd1' appears twice"),
        (CORPUS, QUERIES, "q1\td1\n", ValueError, r"test.tsv:1: expected 3 tab-separated columns"),
        (CORPUS, QUERIES, "q1\td1\t1\nq1\td2\t1.5\n", ValueError, r"test.tsv:2: score '1.5' is not an integer"),
        (CORPUS, QUERIES, "q9\td1\t1\n", ValueError, r"judges 1 queries missing from queries.jsonl, e.g. 'q9'"),
        (CORPUS, QUERIES, "q1\td1\t0\n", ValueError, r"marks no document relevant"),
    ],
)
def test_bad_beir_sets_name_the_problem(
    tmp_path: Path, corpus: list[dict], queries: list[dict], qrels: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        read_beir(write_beir(tmp_path, corpus, queries, qrels))


def test_beir_lines_that_are_not_json_objects(tmp_path: Path) -> None:
    write_beir(tmp_path, CORPUS, QUERIES, QRELS)
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "ok"}\n{broken\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"queries.jsonl:2: not valid JSON"):
        read_beir(tmp_path)
    (tmp_path / "queries.jsonl").write_text('["q1", "ok"]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"queries.jsonl:1: expected a JSON object, got list"):
        read_beir(tmp_path)


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_beir_missing_files_are_named(tmp_path: Path, missing: str) -> None:
    write_beir(tmp_path, CORPUS, QUERIES, QRELS)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=f"has no {missing} \\(BEIR layout: corpus.jsonl"):
        read_beir(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        read_beir(tmp_path / "nowhere")


def write_sts_retrieval_set(folder: Path, pairs: StsPairs, count: int) -> Path:
    """A BEIR folder from the first `count` STS pairs whose second sentences differ (equal documents
    would tie): each first sentence of a pair scoring 3 or more asks for its second sentence (graded:
    the score rounded down) and, less, for the next document (1). Query q0 is also a document, which
    must never be retrieved for itself."""
    distinct = [index for index, text in enumerate(pairs.second[:count]) if text not in pairs.second[:index]]
    corpus = [{"_id": f"d{index}", "title": "", "text": pairs.second[index]} for index in distinct]
    corpus.append({"_id": "q0", "title": "Self", "text": pairs.first[0]})
    queries = [{"_id": f"q{index}", "text": pairs.first[index]} for index in distinct]
    qrels = "".join(
        f"q{index}\td{index}\t{int(pairs.scores[index])}\nq{index}\td{following}\t1\n"
        for index, following in zip(distinct, distinct[1:])
        if pairs.scores[index] >= 3
    )
    return write_beir(folder, corpus, queries, "query-id\tcorpus-id\tscore\n" + qrels)
