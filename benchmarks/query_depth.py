"""Shallow queries against documents at full depth: single-query latency where it is felt, beside nDCG@10.

In one run:
1. adapt the model (default: the packaged all-MiniLM-L6-v2) on a corpus (default: the sample
   documents' chunks, as `mm2d adapt --corpus` on the sample corpus does);
2. score the sample questions over the sample chunks (benchmarks/retrieval_sets.py sample):
   nDCG@10 with documents at full depth and queries at each depth (`mm2d eval retrieval --cross-depth`);
3. index the sample documents at full depth into a temporary embedded Chroma (`mm2d index`);
4. with the model loaded, at 1 and at 2 torch threads, time every question through three paths, at
   full depth and at each query depth (`query_num_layers`), one encoder per depth sharing one model:
   - `ask()` retrieval: what `mm2d ask` runs once the model is loaded, up to the answer (client,
     guarded collection, LangChain vector store and chain, retrieval of k=3 chunks); the answer is
     left out: it is the generator's cost, whatever the query depth;
   - the LangChain retriever alone (`chroma_vector_store(...).as_retriever(k=3)`, built once);
   - the query's embedding alone (`Matryoshka2DEmbeddings.embed_query`): the part depth changes;
   and print median and p95 milliseconds per question with their ratios to full depth;
5. for scale, the extractive answer (the default generator of `mm2d ask`) once per question at full
   depth, and at each depth how many questions it answers rather than finding nothing relevant.

Every (path, depth) contender runs in every round (their order rotates each round) and keeps its
best median and best p95 of `--rounds` rounds, so that other work on the machine weighs on all alike.

Usage: OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python benchmarks/query_depth.py [--corpus PATH] [--rounds N] [--model M]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle OpenMP threads must not spin

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from retrieval_sets import build_sample  # noqa: E402

from mm2d_integrations import Matryoshka2DEncoder  # noqa: E402
from mm2d_integrations.cli.adapt import format_adapt_report  # noqa: E402
from mm2d_integrations.core.checkpoint import default_model  # noqa: E402
from mm2d_integrations.evaluation.cross_depth import evaluate_depths  # noqa: E402
from mm2d_integrations.evaluation.datasets import read_beir  # noqa: E402
from mm2d_integrations.langchain import Matryoshka2DEmbeddings, chroma_vector_store  # noqa: E402
from mm2d_integrations.rag.generators import NOTHING_RELEVANT, Answer, Passage, unique_sources  # noqa: E402
from mm2d_integrations.rag.pipeline import Store, ask, index  # noqa: E402
from mm2d_integrations.samples import SAMPLE_DOCS  # noqa: E402
from mm2d_integrations.training.adapt import adapt, read_corpus  # noqa: E402

K = 3
THREADS = (1, 2)


class SourcesOnly:
    """A generator that costs nothing: `ask()` up to the answer."""

    def answer(self, question: str, passages: list[Passage]) -> Answer:
        return Answer("", unique_sources(passages))


def percentile(values: list[float], share: float) -> float:
    """The `share` quantile, interpolated between the two nearest ranks."""
    return float(np.quantile(values, share))


def best_latencies(
    contenders: dict[tuple[str, int], Callable[[str], object]], questions: list[str], rounds: int
) -> dict[tuple[str, int], tuple[float, float]]:
    """Per contender, the best median and the best p95 seconds per question over `rounds` rounds."""
    best = {name: (float("inf"), float("inf")) for name in contenders}
    names = list(contenders)
    for round_number in range(rounds):
        for name in names[round_number % len(names) :] + names[: round_number % len(names)]:
            seconds = []
            for question in questions:
                started = time.perf_counter()
                contenders[name](question)
                seconds.append(time.perf_counter() - started)
            best[name] = (min(best[name][0], statistics.median(seconds)), min(best[name][1], percentile(seconds, 0.95)))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="the model to adapt (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--corpus", type=Path, default=SAMPLE_DOCS, help="what to adapt on (as mm2d adapt --corpus)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of every question through every contender (default 7)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mm2d-query-depth-"))
    print(f"work folder {work}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    adapted = work / "adapted"
    print(format_adapt_report(adapt(args.model or default_model(), read_corpus(args.corpus), adapted)))
    sample = build_sample(work / "sample-retrieval")
    scores = evaluate_depths(Matryoshka2DEncoder(adapted), read_beir(sample))
    same = {depth: metrics["nDCG@10"] for depth, metrics in scores.same_depth.items()}
    crossed = {depth: metrics["nDCG@10"] for depth, metrics in scores.cross_depth.items()}

    store = Store(persist_dir=work / "chroma", encoder=Matryoshka2DEncoder(adapted))
    print(index(SAMPLE_DOCS, store))
    questions = read_beir(sample).queries
    depths = sorted(crossed, reverse=True)
    encoders = {depth: Matryoshka2DEncoder(adapted, query_num_layers=depth) for depth in depths}
    stores = {depth: Store(persist_dir=store.persist_dir, encoder=encoder) for depth, encoder in encoders.items()}
    client = store.client()
    retrievers = {
        depth: chroma_vector_store(Matryoshka2DEmbeddings.from_encoder(encoder), client=client).as_retriever(search_kwargs={"k": K})
        for depth, encoder in encoders.items()
    }
    full = depths[0]
    answered, answer_seconds, answer_threads = {}, [], torch.get_num_threads()
    for depth in depths:
        answered[depth] = 0
        for question in questions:
            started = time.perf_counter()
            answered[depth] += ask(question, stores[depth], k=K).text != NOTHING_RELEVANT
            if depth == full:
                answer_seconds.append(time.perf_counter() - started)
    contenders: dict[tuple[str, int], Callable[[str], object]] = {}
    for depth in depths:
        contenders["ask() retrieval", depth] = lambda question, store=stores[depth]: ask(question, store, k=K, generator=SourcesOnly())
        contenders["LangChain retriever", depth] = retrievers[depth].invoke
        contenders["query embedding", depth] = Matryoshka2DEmbeddings.from_encoder(encoders[depth]).embed_query
    rows = []
    for threads in THREADS:
        torch.set_num_threads(threads)
        best = best_latencies(contenders, questions, args.rounds)
        rows += [(threads, path, depth, *best[path, depth]) for path in dict.fromkeys(path for path, _ in best) for depth in depths]
    print(f"\n{len(questions)} sample questions, {args.rounds} rounds, best median and best p95 per contender; "
          f"nDCG@10 x100 on the sample set (documents at {full} layers); load average {os.getloadavg()[0]:.2f}")
    print(f"for scale: ask() with the extractive answer at {full} layers, {answer_threads} threads, one round: "
          f"median {1000 * statistics.median(answer_seconds):.0f} ms, p95 {1000 * percentile(answer_seconds, 0.95):.0f} ms")
    print("| torch threads | path | query layers | median ms | p95 ms | median vs full depth | p95 vs full depth |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    reference = {(threads, path): (median, p95) for threads, path, depth, median, p95 in rows if depth == full}
    for threads, path, depth, median, p95 in rows:
        full_median, full_p95 = reference[threads, path]
        print(f"| {threads} | {path} | {depth} | {1000 * median:.2f} | {1000 * p95:.2f} | {median / full_median:.2f} | {p95 / full_p95:.2f} |")
    print("\n| query layers | nDCG@10 cross-depth | % of full depth | nDCG@10 same-depth (for reference) | questions ask() answers |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for depth in depths:
        print(f"| {depth} | {crossed[depth]:.2f} | {100 * crossed[depth] / crossed[full]:.1f}% | {same[depth]:.2f} | {answered[depth]} of {len(questions)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
