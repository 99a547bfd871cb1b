"""Readers for evaluation data: STS pairs and BEIR-layout retrieval sets."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BEIR_LAYOUT", "BeirSet", "StsPairs", "read_beir", "read_sts"]


@dataclass(frozen=True)
class StsPairs:
    """Sentence pairs with their gold similarity scores."""

    scores: list[float]
    first: list[str]
    second: list[str]

    def distinct(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Each sentence once, in order of first appearance, and the index in that list of each pair's
        first and second sentence: every sentence is encoded once, then the pairs compared."""
        sentences = list(dict.fromkeys(self.first + self.second))
        position = {text: index for index, text in enumerate(sentences)}
        return sentences, np.array([position[text] for text in self.first]), np.array([position[text] for text in self.second])


def read_sts(path: str | Path) -> StsPairs:
    """STS Benchmark layout (score in column 5, sentences in 6 and 7, extra columns ignored)
    or plain `score<TAB>s1<TAB>s2`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"STS file {str(path)!r} {'is a folder, not a file' if Path(path).is_dir() else 'does not exist'}")
    scores: list[float] = []
    first: list[str] = []
    second: list[str] = []
    with open(path, encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or not "".join(row).strip():
                continue
            columns = row[4:7] if len(row) >= 7 else row[:3]
            if len(columns) != 3:
                raise ValueError(f"{path}:{number}: expected 3 or at least 7 tab-separated columns, got {len(row)}")
            try:
                score = float(columns[0])
            except ValueError:
                if number == 1:
                    continue  # a header line
                raise ValueError(f"{path}:{number}: score {columns[0]!r} is not a number") from None
            scores.append(score)
            first.append(columns[1])
            second.append(columns[2])
    if not scores:
        raise ValueError(f"{path} holds no scored sentence pairs")
    return StsPairs(scores, first, second)


@dataclass(frozen=True)
class BeirSet:
    """A retrieval set: documents, the queries that have relevant documents, and their judgments."""

    corpus_ids: list[str]
    documents: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]  # query id -> corpus id -> relevance (graded, > 0 is relevant)

    def own_documents(self) -> np.ndarray:
        """For each query, the index of the document with the query's id, or -1: BEIR never retrieves it,
        as in sets whose queries are also documents it is a trivial match (see `ranking.top_k`)."""
        position = {corpus_id: index for index, corpus_id in enumerate(self.corpus_ids)}
        return np.array([position.get(query_id, -1) for query_id in self.query_ids])


BEIR_LAYOUT = "corpus.jsonl, queries.jsonl and qrels/test.tsv"


def read_beir(folder: str | Path) -> BeirSet:
    """BEIR layout: a document is its title + " " + text; only queries with a relevant document are kept,
    as they are the only ones the metrics can score."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (BEIR layout: {BEIR_LAYOUT})")
    qrels = _read_qrels(_beir_file(folder, "qrels/test.tsv"))
    corpus = _read_jsonl(_beir_file(folder, "corpus.jsonl"))
    all_queries = _read_jsonl(_beir_file(folder, "queries.jsonl"))
    judged = [query_id for query_id, judgments in qrels.items() if any(rel > 0 for rel in judgments.values())]
    unknown = [query_id for query_id in judged if query_id not in all_queries]
    if unknown:
        raise ValueError(
            f"{folder}: qrels/test.tsv judges {len(unknown)} queries missing from queries.jsonl, e.g. {unknown[0]!r}"
        )
    if not judged:
        raise ValueError(f"{folder}: qrels/test.tsv marks no document relevant (score > 0) to any query")
    return BeirSet(
        corpus_ids=list(corpus),
        documents=[f"{record.get('title') or ''} {record['text']}".strip() for record in corpus.values()],
        query_ids=judged,
        queries=[all_queries[query_id]["text"] for query_id in judged],
        qrels={query_id: qrels[query_id] for query_id in judged},
    )


def _beir_file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {name} (BEIR layout: {BEIR_LAYOUT})")
    return path


def _read_jsonl(path: Path) -> dict[str, dict[str, Any]]:
    """Records by `_id`; each needs a string `_id` and `text`."""
    records: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            for key in ("_id", "text"):
                if not isinstance(record.get(key), str):
                    raise ValueError(f"{path}:{number}: {key!r} must be a string, got {record.get(key)!r}")
            if record["_id"] in records:
                raise ValueError(f"{path}:{number}: _id {record['_id']!r} appears twice")
            records[record["_id"]] = record
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """`query-id<TAB>corpus-id<TAB>score` lines with integer scores, after an optional header line."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3:
                raise ValueError(
                    f"{path}:{number}: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(row)}"
                )
            try:
                relevance = int(row[2])
            except ValueError:
                if number == 1:
                    continue  # the header line
                raise ValueError(f"{path}:{number}: score {row[2]!r} is not an integer") from None
            qrels.setdefault(row[0], {})[row[1]] = relevance
    return qrels
