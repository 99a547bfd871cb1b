"""Acceptance of funnel retrieval, measured in one run, both searches in Chroma:

1. nDCG@10 of the funnel (shortlist by a prefix of one sixth of the dimensions in an HNSW index,
   re-rank by all of them) within 1% of single-stage full-dimension search (exact, and Chroma's HNSW);
2. its per-query latency and index size against single-stage full-dimension search in Chroma.

Usage: HF_HUB_OFFLINE=1 python benchmarks/funnel.py [BEIR_DIR] [--funnel 64x10] [--repeats 5] [--model M]
BEIR_DIR defaults to the STS Benchmark retrieval set (benchmarks/retrieval_sets.py stsb), built in a
temporary folder. Documents and queries are encoded once; both indexes get the same vectors. Timings
alternate between the two searches and keep each one's best, so that load on the machine weighs on
both alike; they start from the query vector (encoding it, the same for both, is timed apart).
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.chroma import FunnelIndex, chroma_client, open_collection
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.evaluation.datasets import BeirSet, read_beir
from mm2d_integrations.evaluation.metrics import ndcg_at_k
from mm2d_integrations.evaluation.ranking import mean_score, top_k
from mm2d_integrations.retrieval.funnel import Funnel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_sets import build_stsb

K = 10
MAX_LOSS = 0.01  # nDCG@10 within 1% of full dimensions
BATCH = 1000


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def hnsw_bytes(persist_dir: Path, collection_id: str) -> int:
    """Bytes of a collection's HNSW index: embedded Chroma keeps it in a folder named by its vector segment."""
    with sqlite3.connect(persist_dir / "chroma.sqlite3") as database:
        (segment,) = database.execute(
            "select id from segments where collection = ? and scope = 'VECTOR'", (collection_id,)
        ).fetchone()
    return folder_bytes(persist_dir / segment)


def ndcg(rankings: list[list[str]], dataset: BeirSet) -> float:
    return mean_score(ndcg_at_k, rankings, dataset, K)


def recall(rankings: list[list[str]], exact: list[list[str]]) -> float:
    """x100: the share of exact search's top k that each ranking holds."""
    return 100 * float(np.mean([len(set(found) & set(wanted)) / len(wanted) for found, wanted in zip(rankings, exact)]))


Search = Callable[[np.ndarray], list[str]]  # query vector -> ids, best first


def best_seconds_per_query(
    searches: dict[str, Search], queries: np.ndarray, repeats: int
) -> tuple[dict[str, float], dict[str, list[list[str]]]]:
    """Each search over every query, in turns, `repeats` times: best seconds per query, and the rankings."""
    for search in searches.values():  # warm-up: load the indexes, outside every timing
        for query in queries[:20]:
            search(query)
    best = dict.fromkeys(searches, math.inf)
    rankings: dict[str, list[list[str]]] = {}
    for repeat in range(repeats):
        this_round = {}
        for name, search in searches.items():
            started = time.perf_counter()
            rankings[name] = [search(query) for query in queries]
            this_round[name] = (time.perf_counter() - started) / len(queries)
            best[name] = min(best[name], this_round[name])
        print(f"repeat {repeat + 1}: " + ", ".join(f"{name} {1000 * seconds:.3f} ms/query" for name, seconds in this_round.items()))
    return best, rankings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("beir_dir", nargs="?", type=Path, default=None)
    parser.add_argument("--funnel", default=None, help="SHORTLIST_DIMSxFACTOR (default: a sixth of the dimensions x 10)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    encoder = Matryoshka2DEncoder(args.model or default_model())
    funnel = Funnel.parse(args.funnel or f"{encoder.dimensions // 6}x10").check(encoder.dimensions)
    with tempfile.TemporaryDirectory(prefix="mm2d-funnel-") as scratch:
        dataset = read_beir(args.beir_dir or build_stsb(Path(scratch) / "stsb"))
        if set(dataset.query_ids) & set(dataset.corpus_ids):
            raise ValueError("queries whose id is also a document's: this benchmark does not skip them")
        print(f"{len(dataset.documents)} documents, {len(dataset.queries)} queries; {encoder}; funnel {funnel}")
        started = time.perf_counter()
        documents = encoder.encode_documents(dataset.documents, show_progress=True)
        print(f"documents encoded in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        queries = encoder.encode_queries(dataset.queries)
        encode_ms = 1000 * (time.perf_counter() - started) / len(queries)

        persist = {name: Path(scratch) / name for name in ("single", "funnel")}
        single = open_collection(encoder, "single", client=chroma_client(persist["single"]))
        index = FunnelIndex(encoder, "funnel", shortlist_dims=funnel.shortlist_dims, client=chroma_client(persist["funnel"]))
        started = time.perf_counter()
        for start in range(0, len(documents), BATCH):
            ids, texts = dataset.corpus_ids[start : start + BATCH], dataset.documents[start : start + BATCH]
            single.upsert(ids=ids, embeddings=documents[start : start + BATCH], documents=texts)
        single_build = time.perf_counter() - started
        started = time.perf_counter()
        for start in range(0, len(documents), BATCH):
            ids, texts = dataset.corpus_ids[start : start + BATCH], dataset.documents[start : start + BATCH]
            index.upsert(ids, texts, vectors=documents[start : start + BATCH])
        funnel_build = time.perf_counter() - started

        include = ["documents", "metadatas", "distances"]  # what the funnel returns too
        searches: dict[str, Search] = {
            "single-stage": lambda query: single.query(query_embeddings=query[None, :], n_results=K, include=include)["ids"][0],
            f"funnel {funnel}": lambda query: [hit.id for hit in index.search_vector(query, K, funnel.shortlist_factor)],
        }
        seconds, rankings = best_seconds_per_query(searches, queries, args.repeats)
        exact = [[dataset.corpus_ids[row] for row in found] for found in top_k(queries, documents, K, np.full(len(queries), -1))]
        sizes = {
            "single-stage": (hnsw_bytes(persist["single"], str(single.id)), folder_bytes(persist["single"])),
            f"funnel {funnel}": (hnsw_bytes(persist["funnel"], str(index.short.id)), folder_bytes(persist["funnel"])),
        }
        full_hnsw = hnsw_bytes(persist["funnel"], str(index.full.id))

    count = len(documents)
    exact_ndcg = ndcg(exact, dataset)
    print(f"\nexact single-stage search over all {encoder.dimensions} dimensions (numpy): nDCG@10 {exact_ndcg:.2f}")
    print(f"{'search (Chroma)':<16}  {'nDCG@10':>7}  {'vs exact':>8}  {'recall@10 vs exact':>18}  {'ms/query':>8}  "
          f"{'searched HNSW bytes/vector':>26}  {'on disk MB':>10}  {'build s':>7}")
    for (name, ranked), build in zip(rankings.items(), (single_build, funnel_build)):
        score = ndcg(ranked, dataset)
        print(f"{name:<16}  {score:>7.2f}  {100 * (score - exact_ndcg) / exact_ndcg:>+7.2f}%  {recall(ranked, exact):>18.2f}  "
              f"{1000 * seconds[name]:>8.3f}  {sizes[name][0] / count:>26.0f}  {sizes[name][1] / 1e6:>10.1f}  {build:>7.1f}")
    funnel_name = f"funnel {funnel}"
    print(f"(encoding a query: {encode_ms:.2f} ms, the same for both; the funnel's full collection keeps an HNSW "
          f"index of its own, {full_hnsw / count:.0f} bytes/vector, that its search does not use)")
    print(f"ratios funnel / single-stage: latency {seconds[funnel_name] / seconds['single-stage']:.2f}, "
          f"searched index {sizes[funnel_name][0] / sizes['single-stage'][0]:.2f}, "
          f"on disk {sizes[funnel_name][1] / sizes['single-stage'][1]:.2f}")
    loss = (exact_ndcg - ndcg(rankings[funnel_name], dataset)) / exact_ndcg
    print(f"nDCG@10 loss against exact full dimensions: {100 * loss:.2f}% (target <= {100 * MAX_LOSS:.0f}%)")
    print("PASS" if loss <= MAX_LOSS else "FAIL")
    return 0 if loss <= MAX_LOSS else 1


if __name__ == "__main__":
    sys.exit(main())
