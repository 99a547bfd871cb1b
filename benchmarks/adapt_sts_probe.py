"""Probe: do everyday words carry an exit layer trained on SciFact abstracts over to STS dev?

Adapts all-MiniLM-L6-v2 at depth 3 (exit layer, `mm2d adapt`'s defaults otherwise) on N abstracts drawn at
random from $MM2D_SCIFACT_DIR/corpus.jsonl, and scores STS Benchmark dev at 3 layers, for each variant:
`abstracts` (the N abstracts alone), `vocabulary` (plus N "sentences" of 6 to 20 words drawn from the
model's own vocabulary, the lower ranks likelier, as texts), `vocabulary-queries` (the same, added to the
pseudo-queries instead of the texts); `--exit-layer-start own` starts the exit layer as the layer it
replaces (the default before) instead of the model's last. Prints the STS dev Spearman x100 at 3 layers
and its share of full depth, and the adaptation's wall time. Results in docs/adapt.md (the targets).

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/adapt_sts_probe.py abstracts vocabulary vocabulary-queries --texts 1000 [--exit-layer-start own]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from transformers import AutoTokenizer

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.evaluation.datasets import read_sts
from mm2d_integrations.evaluation.grid import evaluate_sts
from mm2d_integrations.training import adapt as adapt_module

SCIFACT = Path(os.environ.get("MM2D_SCIFACT_DIR", "../shared/data/scifact-train"))
STSB = Path(os.environ.get("MM2D_STSB_DIR", "../shared/data/stsb"))
VARIANTS = ("abstracts", "vocabulary", "vocabulary-queries")
WORDS = 20_000  # the first whole words of the vocabulary drawn from
DEPTH = 3
CutQueries = Callable[[Sequence[str], int, int], tuple[list[str], list[int]]]


def vocabulary_sentences(model: str, count: int, seed: int = 0) -> list[str]:
    """`count` strings of 6 to 20 whole words of the tokenizer's vocabulary, the word of rank r drawn with
    weight 1 / (r + 10): vocabularies are built most frequent first, so everyday words come often."""
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    words = [token for token in tokens if token.isalpha() and len(token) > 1][:WORDS]  # no "##" pieces, no "[UNK]"
    weights = [1 / (rank + 10) for rank in range(len(words))]
    generator = random.Random(seed)
    return [" ".join(generator.choices(words, weights, k=generator.randint(6, 20))) for _ in range(count)]


def with_extra_queries(cut: CutQueries, extra: list[str]) -> CutQueries:
    """`cut` (cut_pseudo_queries) with `extra` after its pseudo-queries, each given a text at random as its
    source (so held out with it)."""

    def cut_and_add(texts: Sequence[str], per_text: int, seed: int) -> tuple[list[str], list[int]]:
        queries, sources = cut(texts, per_text, seed)
        generator = random.Random(seed + 1)
        return queries + extra, sources + [generator.randrange(len(texts)) for _ in extra]

    return cut_and_add


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", choices=VARIANTS)
    parser.add_argument("--texts", type=int, default=1000, help="abstracts drawn at random (default 1000)")
    parser.add_argument("--exit-layer-start", choices=adapt_module.EXIT_LAYER_STARTS, default="last", help="what the exit layer starts as (default last)")
    args = parser.parse_args()
    base = default_model()
    abstracts = random.Random(0).sample(adapt_module.read_corpus(SCIFACT / "corpus.jsonl"), args.texts)
    pairs = read_sts(STSB / "sts-dev.csv")
    cut = adapt_module.cut_pseudo_queries
    for variant in args.variants:
        texts = abstracts + vocabulary_sentences(base, args.texts) if variant == "vocabulary" else list(abstracts)
        if variant == "vocabulary-queries":
            adapt_module.cut_pseudo_queries = with_extra_queries(cut, vocabulary_sentences(base, args.texts))  # type: ignore[assignment]  # undone below
        try:
            with tempfile.TemporaryDirectory() as scratch:
                started = time.perf_counter()
                adapt_module.adapt(base, texts, Path(scratch) / "out", layers=[DEPTH], exit_layers=[DEPTH], exit_layer_start=args.exit_layer_start)
                seconds = time.perf_counter() - started
                encoder = Matryoshka2DEncoder(Path(scratch) / "out")
                (sts,) = evaluate_sts(encoder, pairs, [DEPTH, encoder.max_layers], [encoder.max_dimensions]).scores.values()
        finally:
            adapt_module.cut_pseudo_queries = cut
        shallow, full = sts[DEPTH, encoder.max_dimensions], sts[encoder.max_layers, encoder.max_dimensions]
        print(f"{variant:18s} {args.texts} abstracts, exit layer started as {args.exit_layer_start}: STS dev at {DEPTH} layers {shallow:.2f} ({100 * shallow / full:.1f}%)  adapt {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
