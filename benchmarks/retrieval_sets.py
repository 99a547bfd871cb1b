"""Build BEIR-layout retrieval sets (corpus.jsonl, queries.jsonl, qrels/test.tsv) from data on this machine.

- `stsb OUT`: from the STS Benchmark train and dev splits (sts-train.csv and sts-dev.csv in
  $MM2D_STSB_DIR, else in the current folder; public data you download, see the README, "Tests").
  Each distinct first sentence of a pair scoring 4 or more (same meaning, or nearly) is a query;
  its pair's second sentence is its relevant document. The corpus is every distinct sentence of
  both splits except the queries' own, so that no query finds itself: 11,599 documents and 1,584
  queries.
- `sample OUT`: from the sample corpus (mm2d_integrations.samples): documents are the chunks
  `split_documents` makes by default (800 characters), queries its 49 questions. Relevance 2: the chunks of the expected file
  that hold the answer (its first clause, else the most of its words); 1: the file's other chunks.

Usage: python benchmarks/retrieval_sets.py {stsb,sample} OUT
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

STSB = Path(os.environ.get("MM2D_STSB_DIR", "."))
SAME_MEANING = 4.0


def write_beir(folder: Path, corpus: list[dict], queries: list[dict], qrels: dict[str, dict[str, int]]) -> Path:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(record) + "\n" for record in corpus), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(record) + "\n" for record in queries), encoding="utf-8")
    rows = "".join(f"{query}\t{doc}\t{score}\n" for query, judged in qrels.items() for doc, score in judged.items())
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows, encoding="utf-8")
    return folder


def build_stsb(out: Path, stsb: Path = STSB) -> Path:
    from mm2d_integrations.evaluation.datasets import read_sts

    pairs = [read_sts(stsb / name) for name in ("sts-train.csv", "sts-dev.csv")]
    scores = [score for split in pairs for score in split.scores]
    first = [text for split in pairs for text in split.first]
    second = [text for split in pairs for text in split.second]
    asking = list(dict.fromkeys(text for text, score in zip(first, scores) if score >= SAME_MEANING))
    asked = set(asking)
    documents = [text for text in dict.fromkeys(first + second) if text not in asked]
    doc_ids = {text: f"d{index}" for index, text in enumerate(documents)}
    query_ids = {text: f"q{index}" for index, text in enumerate(asking)}
    qrels: dict[str, dict[str, int]] = {}
    for query, answer, score in zip(first, second, scores):
        if score >= SAME_MEANING and answer in doc_ids:
            qrels.setdefault(query_ids[query], {})[doc_ids[answer]] = 1
    corpus = [{"_id": doc_ids[text], "title": "", "text": text} for text in documents]
    queries = [{"_id": query_ids[text], "text": text} for text in asking if query_ids[text] in qrels]
    return write_beir(out, corpus, queries, qrels)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[\w£€%.,-]+", text.lower())) - {"", "the", "and", "for", "of", "a", "to", "in", "or"}


def build_sample(out: Path) -> Path:
    from mm2d_integrations.retrieval.documents import load_folder, split_documents
    from mm2d_integrations.samples import SAMPLE_DOCS, load_questions

    chunks = split_documents(load_folder(SAMPLE_DOCS).documents)
    questions = load_questions()
    qrels: dict[str, dict[str, int]] = {}
    for number, question in enumerate(questions):
        own = [chunk for chunk in chunks if chunk.source == question["source"]]
        clause = re.split(r";| \(| or ", question["answer"])[0].strip().lower()
        holding = [chunk for chunk in own if clause in chunk.text.lower()]
        if not holding:
            overlap = {chunk.id: len(_words(question["answer"]) & _words(chunk.text)) for chunk in own}
            holding = [chunk for chunk in own if overlap[chunk.id] == max(overlap.values())]
        best = {chunk.id for chunk in holding}
        qrels[f"q{number}"] = {chunk.id: 2 if chunk.id in best else 1 for chunk in own}
    corpus = [{"_id": chunk.id, "title": "", "text": chunk.text} for chunk in chunks]
    queries = [{"_id": f"q{number}", "text": question["question"]} for number, question in enumerate(questions)]
    return write_beir(out, corpus, queries, qrels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", choices=("stsb", "sample"))
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    folder = (build_stsb if args.set == "stsb" else build_sample)(args.out)
    from mm2d_integrations.evaluation.datasets import read_beir

    dataset = read_beir(folder)
    print(f"{folder}: {len(dataset.documents)} documents, {len(dataset.queries)} queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
