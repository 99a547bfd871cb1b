"""Make an ordinary embedding model truncatable in depth, without labels: learn exit heads (and exit layers).

The full-depth model is the frozen teacher. One forward pass over unlabeled text gives the pooled
state of every depth; for each shallow depth a small head is fitted to map it onto the teacher's
normalised embedding: closed-form ridge regression, a low-rank map, or a linear map plus a small
MLP (both trained, starting from the ridge solution, on a cosine loss, optionally plus a loss that
matches the teacher's similarity structure). Retrieval needs the teacher's ranking of documents for
a query, so pseudo-queries are cut from the documents (a sentence, or a span of a one-sentence
text), embedded with the query prompt, and trained on like every text. The head kept is the one
whose rankings agree best with the teacher's on a held-out part of the same text. The base weights
are copied unchanged beside the heads, so full depth stays bit-identical.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm import tqdm

from mm2d_integrations.core.encoder import Matryoshka2DEncoder
from mm2d_integrations.core.exit_heads import HEADS_CONFIG, HEADS_FILE, ExitHead, save_exit_heads
from mm2d_integrations.core.folders import check_new_folder, staged_folder
from mm2d_integrations.core.loading import shallow_view
from mm2d_integrations.core.runtime import bf16_supported
from mm2d_integrations.core.validation import check_choice, check_int_in_range
from mm2d_integrations.retrieval.documents import file_kind, load_folder, split_documents

__all__ = [
    "AGREEMENT_K", "AdaptReport", "BATCH", "DepthResult", "EPOCHS", "HEAD_SIDES", "HELD_OUT_SHARE", "LEARNING_RATE", "LOSSES", "LOW_RANK",
    "MAX_AGREEMENT_QUERIES", "MAX_HELD_OUT", "MAX_RANKED_DOCUMENTS", "MAX_START_DOCUMENTS", "MAX_TEXTS", "METHODS", "MIN_TEXTS", "PSEUDO_QUERIES", "EXIT_LAYER_STARTS", "LAYER_BATCH", "LAYER_EPOCHS", "LAYER_LEARNING_RATE", "MAX_KEPT_STATES", "RANKING_WEIGHT", "RIDGE_PENALTIES", "TEMPERATURE", "TOP_K",
    "Rows", "Training", "adapt", "agreement", "cut_pseudo_queries", "fit_exit_layer", "fit_head", "fit_ridge", "mean_cosine", "read_corpus",
]

METHODS = ("auto", "ridge", "lowrank", "mlp")  # the head kind of a depth without an exit layer
MIN_TEXTS = 10
MAX_TEXTS = 20_000  # default cap: every depth's pooled vectors of every text are held in memory
HELD_OUT_SHARE = 0.1
MAX_HELD_OUT = 2_000
RIDGE_PENALTIES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # times the number of texts, on standardised input
LOW_RANK = 128  # at most half the width
EPOCHS = 10
BATCH = 128
LEARNING_RATE = 1e-3
LOSSES = ("auto", "cosine", "similarity", "listwise")  # auto: cosine and similarity, the one that ranks better kept
HEAD_SIDES = ("shared", "per-side", "auto")
PSEUDO_QUERIES = 2  # cut from each text: queries look like a piece of a document, which whole documents never teach (docs/adapt.md)
PSEUDO_QUERY_WORDS = (4, 32)  # a pseudo-query's fewest and most words
TEMPERATURE = 0.05  # of the softmax over similarities that the ranking losses match
TOP_K = 16  # the teacher's nearest documents per query in the listwise loss (and as many random ones)
RANKING_WEIGHT = 0.1  # of a ranking loss beside the cosine loss
LAYER_EPOCHS = 2  # of an exit layer: one meets the SciFact targets, the second adds 1.5 to 2 points of nDCG@10 there for 150 s (docs/adapt.md)
LAYER_LEARNING_RATE = 3e-4  # of the exit layer (its head: LEARNING_RATE)
LAYER_BATCH = (16, 96)  # texts and pseudo-queries a step
EXIT_LAYER_STARTS = ("last", "own")  # an exit layer starts as the model's last layer (default: far better on text unlike the corpus, docs/adapt.md) or as the one it replaces
MAX_KEPT_STATES = 4 << 30  # bytes of token states below an exit layer kept for its training (float32); past it every step runs the frozen layers
AGREEMENT_K = 10  # held-out agreement: the share of the teacher's top 10 documents that a head's top 10 keeps
MAX_AGREEMENT_QUERIES = 1_000
MAX_RANKED_DOCUMENTS = 1_000  # at a depth with an exit layer: the held-out queries rank the held-out texts and fitting ones up to this many
MAX_START_DOCUMENTS = 1_500  # an exit layer's head starts at the ridge solution on the held-out texts and fitting ones up to this many, through the started layer


@dataclass(frozen=True)
class DepthResult:
    """What was tried at one depth, on the held-out texts: mean cosine to the teacher, and agreement
    with the teacher's rankings (the share of its top 10 documents for a held-out query that the
    head's top 10 keeps, averaged over documents through the head and documents at full depth)."""

    kind: str  # the head kept (for queries too, unless query_kind)
    raw_cosine: float  # the plain cut: the pooled state itself, without a head
    tried: dict[str, float]  # candidate -> held-out cosine (of the document head)
    agreements: dict[str, float] = field(default_factory=dict)  # candidate -> held-out agreement (the choice)
    raw_agreement: float = 0.0
    query_kind: str | None = None  # the queries' own head, where one is kept per side

    @property
    def cosine(self) -> float:
        return self.tried[self.chosen]

    @property
    def agreement(self) -> float:
        return self.agreements[self.chosen]

    @property
    def chosen(self) -> str:
        """The candidate kept: a head, or a "query head / document head" pair."""
        return self.kind if self.query_kind is None else f"{self.query_kind} / {self.kind}"


@dataclass(frozen=True)
class Rows:
    """The pooled states at one depth with their teacher vectors: documents (document prompt) and
    queries (query prompt: pseudo-queries, and the documents again where the query prompt differs),
    each query knowing the document it came from; `held` marks held-out documents."""

    documents: torch.Tensor
    document_targets: torch.Tensor
    queries: torch.Tensor
    query_targets: torch.Tensor
    query_sources: torch.Tensor
    held: torch.Tensor  # bool per document

    def side(self, fitting: bool) -> Rows:
        """The fitting (or held-out) documents and the queries cut from them."""
        part = self.subset(~self.held if fitting else self.held)
        return replace(part, held=torch.zeros_like(part.held))

    def subset(self, keep: torch.Tensor) -> Rows:
        """The documents `keep` marks, the queries cut from them, and which of them are held out."""
        kept_queries = keep[self.query_sources]
        renumber = torch.cumsum(keep.long(), 0) - 1
        return Rows(
            self.documents[keep], self.document_targets[keep], self.queries[kept_queries], self.query_targets[kept_queries],
            renumber[self.query_sources[kept_queries]], self.held[keep],
        )

    def held_and_drawn(self, seed: int, total: int) -> torch.Tensor:
        """The held-out documents, and fitting ones drawn at random up to `total` in all: what goes through an
        exit layer where the whole corpus would cost another pass (what it and a head are compared on, what its head starts from)."""
        fitting = torch.nonzero(~self.held).flatten()
        room = max(0, total - int(self.held.sum()))
        keep = self.held.clone()
        keep[fitting[torch.randperm(len(fitting), generator=torch.Generator().manual_seed(seed))[:room]]] = True
        return keep

    def ranking_queries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What ranks documents: the queries, or the documents themselves where there is no query."""
        return (self.queries, self.query_targets) if len(self.queries) else (self.documents, self.document_targets)

    def pointwise(self, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows a head of `side` ("shared", "document" or "query") is fitted on."""
        if side == "document":
            return self.documents, self.document_targets
        if side == "query":
            return self.ranking_queries()
        return torch.cat([self.documents, self.queries]), torch.cat([self.document_targets, self.query_targets])


@dataclass
class AdaptReport:
    out: Path
    model: str
    texts: int
    held_out: int
    depths: dict[int, DepthResult] = field(default_factory=dict)
    pseudo_queries: int = 0
    encode_seconds: float = 0.0
    seconds: float = 0.0


def read_corpus(path: str | Path) -> list[str]:
    """Texts to adapt on: a folder of documents (chunked as `mm2d index` does), a BEIR-style
    .jsonl (title + text of each record), or any other file as one text per non-empty line."""
    path = Path(path)
    if path.is_dir():
        texts = [chunk.text for chunk in split_documents(load_folder(path).documents)]
    elif path.is_file():
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        texts = [_jsonl_text(path, number, line) for number, line in enumerate(lines, 1) if line] if path.suffix == ".jsonl" else lines
    elif path.exists():  # never opened: a FIFO would block, a device may never end
        raise ValueError(f"corpus {str(path)!r} is a {file_kind(path.stat().st_mode)}, not a folder of documents or a file of texts")
    else:
        raise FileNotFoundError(f"corpus {str(path)!r} does not exist (give a folder of documents or a file of texts)")
    texts = [text for text in dict.fromkeys(texts) if text.strip()]
    if not texts:
        raise ValueError(f"corpus {str(path)!r} holds no text")
    return texts


def _jsonl_text(path: Path, number: int, line: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError(f"{path}:{number}: expected a JSON object with a string 'text'")
    return f"{record.get('title') or ''} {record['text']}".strip()


def cut_pseudo_queries(texts: Sequence[str], per_text: int, seed: int) -> tuple[list[str], list[int]]:
    """Up to `per_text` pseudo-queries from each text, and the index of the text each came from: its
    sentences (at least 4 words, a window of at most 32), or, for a text of one sentence, spans of
    half its words. A query is a piece of what it finds; the teacher says which documents it finds."""
    fewest, most = PSEUDO_QUERY_WORDS
    generator = random.Random(seed)
    queries, sources = [], []
    for index, text in enumerate(texts):
        sentences = [sentence.split() for sentence in re.split(r"(?<=[.!?])\s+|\n+", text)]
        sentences = [words for words in sentences if len(words) >= fewest]
        if len(sentences) >= 2:
            picked = generator.sample(sentences, min(per_text, len(sentences)))
        else:
            words = text.split()
            span = max(fewest, len(words) // 2)
            picked = [] if len(words) < fewest + 2 else [
                words[start : start + span] for start in (generator.randrange(len(words) - span + 1) for _ in range(per_text))
            ]
        for words in picked:
            start = generator.randrange(len(words) - most + 1) if len(words) > most else 0
            queries.append(" ".join(words[start : start + most]))
            sources.append(index)
    unique = dict(zip(queries, sources))  # the first source of a repeated piece
    return list(unique), list(unique.values())


def adapt(
    model: str | Path,
    texts: Sequence[str],
    out: str | Path,
    *,
    layers: Sequence[int] | None = None,
    exit_layers: Sequence[int] | None = None,
    method: str = "auto",
    loss: str = "cosine",
    sides: str = "shared",
    pseudo_queries: int = PSEUDO_QUERIES,
    temperature: float = TEMPERATURE,
    top_k: int = TOP_K,
    max_texts: int | None = MAX_TEXTS,
    epochs: int = EPOCHS,
    layer_epochs: int = LAYER_EPOCHS,
    exit_layer_start: str = "last",
    mlp_hidden: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    device: str | None = None,
    show_progress: bool = False,
) -> AdaptReport:
    """Adapt `layers` (default every depth below full) and write a complete model folder to `out`: an exit
    layer at each of `exit_layers`, a head elsewhere. By default an exit layer is tried at the middle
    depth (full // 2, when among `layers`) and kept where it ranks the held-out texts better than the head; empty: none.

    An exit layer (a layer run instead of the depth's last, started as the model's last layer, or as
    the one it replaces with `exit_layer_start="own"`, plus a linear head, trained `layer_epochs`
    epochs to the teacher's vectors and rankings of the texts and pseudo-queries) keeps rankings far
    better than a head where there is text enough: on SciFact, MiniLM at 3 of 6 layers keeps 93% of its
    nDCG@10 against 74% with a head, and 95.5% of its STS dev score, adapted on the 5,183 abstracts alone
    at every depth in about 13 minutes on 2 cores against 5 for heads alone (docs/adapt.md). Elsewhere `method` picks the head kind, `loss` what the
    trained kinds learn (cosine to the teacher, plus the teacher's in-batch similarities or its listwise
    ranking of its `top_k` nearest documents, at `temperature`), `sides` whether queries get a head of
    their own (an exit layer serves both), `pseudo_queries` how many are cut from each text; "auto"
    tries each and keeps what agrees best with the teacher's rankings on held-out text."""
    started = time.perf_counter()
    for name, value, allowed in (("method", method, METHODS), ("loss", loss, LOSSES), ("sides", sides, HEAD_SIDES), ("exit_layer_start", exit_layer_start, EXIT_LAYER_STARTS)):
        check_choice(name, value, allowed)
    check_int_in_range("epochs", epochs, 1, 10_000)
    check_int_in_range("layer_epochs", layer_epochs, 1, 10_000)
    check_int_in_range("pseudo_queries", pseudo_queries, 0, 100)
    check_int_in_range("top_k", top_k, 1, 1 << 16)
    if not (isinstance(temperature, (int, float)) and 1e-4 <= temperature <= 10):
        raise ValueError(f"temperature must be a number in [0.0001, 10], got {temperature!r}")
    out = check_new_folder(out)
    texts = _sample(list(dict.fromkeys(texts)), max_texts, seed)
    teacher = Matryoshka2DEncoder(model, batch_size=batch_size, device=device)
    if teacher.source.file(HEADS_CONFIG) is not None:
        raise ValueError(f"model {teacher.model_name!r} already has exit heads ({HEADS_FILE}); adapt its base model instead")
    full = teacher.max_layers
    if full < 2:
        raise ValueError(f"model {teacher.model_name!r} has 1 layer: there is no shallower depth to adapt")
    depths = list(range(1, full)) if layers is None else sorted({check_int_in_range("layers", depth, 1, full - 1) for depth in layers})
    if not depths:
        raise ValueError(f"layers must name at least one depth in [1, {full - 1}]")
    choose = exit_layers is None  # the default exit layer is tried, and kept where it ranks better; one asked for is kept
    if exit_layers is None:
        exit_layers = [full // 2] if full // 2 in depths else []
    layered = sorted({check_int_in_range("exit_layers", depth, 1, full - 1) for depth in exit_layers})
    if not set(layered) <= set(depths):
        raise ValueError(f"exit_layers {layered} must be among the depths adapted, layers {depths}")
    hidden = 4 * teacher.max_dimensions if mlp_hidden is None else check_int_in_range("mlp_hidden", mlp_hidden, 1, 1 << 16)
    queries, sources = cut_pseudo_queries(texts, pseudo_queries, seed)
    if sides == "per-side" and not queries and teacher.query_prompt == teacher.document_prompt:
        raise ValueError("sides='per-side' needs text on the query side: pseudo_queries >= 1, or a model with its own query prompt")
    report = AdaptReport(out, teacher.model_name, len(texts), min(MAX_HELD_OUT, max(2, int(len(texts) * HELD_OUT_SHARE))))
    report.pseudo_queries = len(queries)

    clock = time.perf_counter()
    below = [depth for depth in layered if depth > 1]  # depth 1 has no layer below it to keep
    replays = {depth: _Replay(MAX_KEPT_STATES // len(below)) for depth in below}  # filled by the teacher's pass
    rows = _pooled_rows(teacher, texts, queries, sources, depths, report.held_out, seed, show_progress, replays)
    report.encode_seconds = time.perf_counter() - clock
    training = Training(method, _losses(loss), hidden, epochs, seed, temperature, top_k)
    heads, query_heads, trained_layers = {}, {}, {}
    asked = _query_side(teacher, texts, queries, sources)[0]
    for depth in depths:
        heads[depth], query_head, report.depths[depth] = fit_head(rows[depth], training, sides)
        if depth in layered:
            ranked = rows[depth].held_and_drawn(seed, MAX_RANKED_DOCUMENTS)
            (layer,), layer_head, through = fit_exit_layer(
                teacher, depth, rows[depth], texts, asked, training, layer_epochs, replays.pop(depth, None), ranked, show_progress,
                exit_layer_start=exit_layer_start,
            )
            report.depths[depth] = _layer_or_head(
                rows[depth].subset(ranked), through, layer_head, query_head or heads[depth], heads[depth], report.depths[depth], choose
            )
            if report.depths[depth].kind == "layer":
                trained_layers[depth], heads[depth], query_head = layer, layer_head, None
        if query_head is not None:
            query_heads[depth] = query_head
    choices = {
        "exit_layers": layered, "exit_layer_start": exit_layer_start, "method": method, "loss": loss, "sides": sides, "pseudo_queries": pseudo_queries, "temperature": temperature, "top_k": top_k,
    }
    _write_folder(teacher, heads, query_heads, report, out, choices, trained_layers)
    report.seconds = time.perf_counter() - started
    return report


def _losses(loss: str) -> tuple[str, ...]:
    return ("cosine", "similarity") if loss == "auto" else (loss,)


def _sample(texts: list[str], max_texts: int | None, seed: int) -> list[str]:
    if len(texts) < MIN_TEXTS:
        raise ValueError(f"the corpus has {len(texts)} distinct texts; adapting needs at least {MIN_TEXTS}")
    if max_texts is not None and len(texts) > check_int_in_range("max_texts", max_texts, MIN_TEXTS, 1 << 30):
        texts = random.Random(seed).sample(texts, max_texts)
    return texts


def _pooled_rows(
    teacher: Matryoshka2DEncoder, texts: list[str], queries: list[str], sources: list[int], depths: list[int],
    held_out: int, seed: int, show_progress: bool, replays: dict[int, _Replay],
) -> dict[int, Rows]:
    """Un-normalised pooled vectors of every depth, one pass per prompt: the texts with the document
    prompt; with the query prompt, the pseudo-queries and, where the model has another query prompt,
    the texts again (queries get it). A random `held_out` of the texts, with their queries, is held out.
    The same passes fill `replays`, the states below each exit layer."""
    full = teacher.max_layers
    every = [*depths, full]
    asked, asked_sources = _query_side(teacher, texts, queries, sources)
    with _keeping(teacher, replays) as before_batch:
        documents = teacher.pooled_layerwise(texts, every, prompt=teacher.document_prompt, show_progress=show_progress, before_batch=before_batch)
        width = documents[full].shape[1]
        asking = (
            teacher.pooled_layerwise(asked, every, prompt=teacher.query_prompt, show_progress=show_progress, before_batch=before_batch)
            if asked else {depth: np.empty((0, width), np.float32) for depth in every}
        )
    held = torch.zeros(len(texts), dtype=torch.bool)
    held[torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))[:held_out]] = True
    document_targets = torch.nn.functional.normalize(torch.from_numpy(documents[full]), dim=1)
    query_targets = torch.nn.functional.normalize(torch.from_numpy(asking[full]), dim=1)
    query_sources = torch.tensor(asked_sources, dtype=torch.long)
    return {
        depth: Rows(torch.from_numpy(documents[depth]), document_targets, torch.from_numpy(asking[depth]), query_targets, query_sources, held)
        for depth in depths
    }


def _query_side(teacher: Matryoshka2DEncoder, texts: list[str], queries: list[str], sources: list[int]) -> tuple[list[str], list[int]]:
    """What is embedded with the query prompt, in `Rows.queries`' order, and the text each came from: the
    pseudo-queries, after the texts themselves where the model has a query prompt of its own."""
    if teacher.query_prompt == teacher.document_prompt:
        return queries, sources
    return [*texts, *queries], [*range(len(texts)), *sources]


def _texts_of(rows: Rows, texts: list[str], asked: list[str], keep: torch.Tensor) -> tuple[list[str], list[str]]:
    """The documents and query-side texts of `rows.subset(keep)`, in its order."""
    kept = keep.tolist()
    return [text for text, flag in zip(texts, kept) if flag], [text for text, source in zip(asked, rows.query_sources.tolist()) if kept[source]]


@dataclass(frozen=True)
class Training:
    """How the trained heads are trained, and which kinds and losses are tried."""

    method: str
    losses: tuple[str, ...]
    mlp_hidden: int
    epochs: int
    seed: int
    temperature: float
    top_k: int


def fit_head(rows: Rows, training: Training, sides: str = "shared") -> tuple[ExitHead, ExitHead | None, DepthResult]:
    """The best head (or document head and query head) of those allowed, by agreement with the
    teacher's rankings on the held-out texts; `rows` hold every text, `held` marks the held-out ones."""
    fitting, held = rows.side(fitting=True), rows.side(fitting=False)
    shared = _candidates(fitting, held, training, "shared") if sides != "per-side" else {}
    split = {}
    if sides != "shared":
        by_side = {side: _candidates(fitting, held, training, side) for side in ("query", "document")}
        query_name = max(by_side["query"], key=lambda name: (agreement(rows, by_side["query"][name], None), name))
        document_name = max(by_side["document"], key=lambda name: (agreement(rows, by_side["query"][query_name], by_side["document"][name]), name))
        split = {f"{query_name} / {document_name}": (by_side["query"][query_name], by_side["document"][document_name])}
    candidates = {name: (head, head) for name, head in shared.items()} | split
    held_documents, held_targets = held.pointwise("shared")
    tried = {name: mean_cosine(pair[1], held_documents, held_targets) for name, pair in candidates.items()}
    agreements = {name: agreement(rows, *pair) for name, pair in candidates.items()}
    chosen = max(candidates, key=lambda name: (agreements[name], tried[name]))
    query_head, document_head = candidates[chosen]
    identity = torch.nn.Identity()
    raw_cosine, raw_agreement = mean_cosine(identity, held_documents, held_targets), agreement(rows, identity, identity)
    if query_head is document_head:
        return document_head, None, DepthResult(chosen, raw_cosine, tried, agreements=agreements, raw_agreement=raw_agreement)
    query_name, document_name = chosen.split(" / ")
    return document_head, query_head, DepthResult(
        document_name, raw_cosine, tried, agreements=agreements, raw_agreement=raw_agreement, query_kind=query_name
    )


def _candidates(fitting: Rows, held: Rows, training: Training, side: str) -> dict[str, ExitHead]:
    """Every head `training` allows for `side`: ridge, then each trained kind with each loss (ranking
    losses on the mlp only when the method is auto), started at ridge."""
    inputs, targets = fitting.pointwise(side)
    ridge = fit_ridge(inputs, targets, *held.pointwise(side))
    candidates = {"ridge": ridge}
    width = inputs.shape[1]
    starts = {
        "lowrank": lambda: _low_rank_from(ridge, min(LOW_RANK, max(1, width // 2))),
        "mlp": lambda: _mlp_from(ridge, training.mlp_hidden, training.seed),
    }
    for kind, start in starts.items():
        if training.method not in ("auto", kind):
            continue
        for loss in training.losses:
            if loss != "cosine" and training.method == "auto" and kind != "mlp":
                continue  # a ranking loss costs several times the cosine loss; with method auto, only the mlp (always kept so far) gets it
            name = kind if loss == "cosine" else f"{kind}+{loss}"
            candidates[name] = _trained(start(), fitting, side, loss, training)
    if training.method != "auto":
        candidates = {name: head for name, head in candidates.items() if name.split("+")[0] == training.method}
    return candidates


@torch.no_grad()
def mean_cosine(head: Any, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(head(inputs), targets).mean())


@torch.no_grad()
def agreement(rows: Rows, query_head: Any, document_head: Any | None) -> float:
    """How well heads keep the teacher's rankings on held-out text: each held-out query (its
    pseudo-queries, else the held-out documents) ranks every document; the share of the teacher's
    top `AGREEMENT_K` found in the heads' top `AGREEMENT_K`, averaged over documents through
    `document_head` (same depth) and documents at full depth (cross depth; only that one without a document head)."""
    held = rows.side(fitting=False)
    queries, query_targets = (part[:MAX_AGREEMENT_QUERIES] for part in held.ranking_queries())
    if not len(queries):
        return 0.0
    k = min(AGREEMENT_K, len(rows.documents))
    teacher = _top(query_targets, rows.document_targets, k)
    shallow = torch.nn.functional.normalize(query_head(queries), dim=1)
    spaces = [rows.document_targets]
    if document_head is not None:
        spaces.append(torch.nn.functional.normalize(document_head(rows.documents), dim=1))
    shares = []
    for documents in spaces:
        found = _top(shallow, documents, k)
        shares.append(float((found[:, :, None] == teacher[:, None, :]).any(2).float().mean()))
    return sum(shares) / len(shares)


def _top(queries: torch.Tensor, documents: torch.Tensor, k: int, rows: int = 4096) -> torch.Tensor:
    """Indices of each query's k nearest documents by dot product, a block of queries at a time."""
    return torch.cat([(block @ documents.T).topk(k, dim=1).indices for block in queries.split(rows)]) if len(queries) else torch.empty(0, k, dtype=torch.long)


@torch.no_grad()
def fit_ridge(inputs: torch.Tensor, targets: torch.Tensor, held_inputs: torch.Tensor, held_targets: torch.Tensor) -> ExitHead:
    """argmin ||X W + b - Y||^2 + penalty ||W||^2 on standardised X, the penalty chosen on the held-out texts."""
    head = ExitHead("linear", inputs.shape[1])
    head.mean.copy_(inputs.mean(0))
    head.scale.copy_(inputs.std(0).clamp(min=1e-6))
    standard = ((inputs - head.mean) / head.scale).double()
    with_bias = torch.cat([standard, torch.ones(len(standard), 1, dtype=standard.dtype)], 1)
    gram, moment = with_bias.T @ with_bias, with_bias.T @ targets.double()
    best = -2.0
    for penalty in RIDGE_PENALTIES:
        ridge = torch.eye(len(gram), dtype=gram.dtype) * penalty * len(standard)
        ridge[-1, -1] = 0  # the bias is not penalised
        solution = torch.linalg.solve(gram + ridge, moment).float()
        candidate = ExitHead("linear", inputs.shape[1])
        candidate.load_state_dict({**head.state_dict(), "linear.weight": solution[:-1].T, "linear.bias": solution[-1]})
        cosine = mean_cosine(candidate, held_inputs, held_targets)
        if cosine > best:
            best, chosen = cosine, candidate
    return chosen


def _low_rank_from(ridge: ExitHead, rank: int) -> ExitHead:
    """A rank-`rank` head starting at the best rank-`rank` approximation of the ridge map."""
    head = ExitHead("lowrank", len(ridge.mean), rank)
    (ridge_map,), (down, up) = ridge.linear_layers(), head.linear_layers()
    left, values, right = torch.linalg.svd(ridge_map.weight.detach(), full_matrices=False)
    with torch.no_grad():
        head.mean.copy_(ridge.mean)
        head.scale.copy_(ridge.scale)
        down.weight.copy_(values[:rank, None] * right[:rank])
        up.weight.copy_(left[:, :rank])
        up.bias.copy_(ridge_map.bias)
    return head


def _mlp_from(ridge: ExitHead, hidden: int, seed: int) -> ExitHead:
    """Ridge map plus an MLP whose output starts at zero: training begins where ridge ended."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = ExitHead("mlp", len(ridge.mean), hidden)
    head.load_state_dict({**head.state_dict(), **ridge.state_dict()})
    last = cast(torch.nn.Linear, head.mlp[2])
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    return head


def _trained(head: ExitHead, rows: Rows, side: str, loss: str, training: Training) -> ExitHead:
    """Adam with a one-cycle schedule on 1 - cosine(head(x), teacher), plus, for a ranking `loss`,
    `RANKING_WEIGHT` times the KL divergence from the teacher's softmax over query-document
    similarities (at `temperature`) to the head's: over in-batch documents (similarity) or over the
    teacher's `top_k` nearest documents of each query and as many random ones (listwise)."""
    inputs, targets = rows.pointwise(side)
    queries, query_targets = rows.ranking_queries()
    nearest = _top(query_targets, rows.document_targets, min(training.top_k, len(rows.documents))) if loss != "cosine" else None
    head.train()
    parameters = [parameter for parameter in head.parameters() if parameter.requires_grad]
    optimiser = torch.optim.Adam(parameters, lr=LEARNING_RATE)
    batches = -(-len(inputs) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=LEARNING_RATE, total_steps=training.epochs * batches)
    generator = torch.Generator().manual_seed(training.seed)
    for _ in range(training.epochs):
        for batch in torch.randperm(len(inputs), generator=generator).split(BATCH):
            value = 1 - torch.nn.functional.cosine_similarity(head(inputs[batch]), targets[batch]).mean()
            if nearest is not None:
                asked = torch.randint(len(queries), (len(batch),), generator=generator)
                value = value + RANKING_WEIGHT * _ranking_loss(head, rows, side, loss, asked, queries, query_targets, nearest, training, generator)
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
            schedule.step()
    return head.eval()


def _ranking_loss(
    head: ExitHead, rows: Rows, side: str, loss: str, asked: torch.Tensor, queries: torch.Tensor, query_targets: torch.Tensor,
    nearest: torch.Tensor, training: Training, generator: torch.Generator,
) -> torch.Tensor:
    """KL(teacher || head) of the softmax over each asked query's candidate documents. The side the
    head serves is the head's, the other the teacher's; a shared head is scored against documents
    through itself (same depth) and at full depth (cross depth)."""
    count = len(asked)
    if loss == "similarity":  # the batch's documents, the same for every query: each query's nearest, and as many random ones
        candidates = torch.cat([nearest[asked, 0], torch.randint(len(rows.documents), (count,), generator=generator)])
    else:
        candidates = torch.cat([nearest[asked], torch.randint(len(rows.documents), nearest[asked].shape, generator=generator)], 1)
    document_targets = rows.document_targets[candidates]
    teacher = torch.log_softmax(_similarities(query_targets[asked], document_targets) / training.temperature, 1)
    student_queries = torch.nn.functional.normalize(head(queries[asked]), dim=1) if side != "document" else query_targets[asked]
    spaces = [document_targets] if side != "document" else []
    if side != "query":
        unique, positions = candidates.unique(return_inverse=True)
        spaces.append(torch.nn.functional.normalize(head(rows.documents[unique]), dim=1)[positions])
    value = torch.zeros(())
    for documents in spaces:
        student = torch.log_softmax(_similarities(student_queries, documents) / training.temperature, 1)
        value = value + torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return value


def _similarities(queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
    """(queries, candidates): against one list of documents for all, or a list per query."""
    return queries @ documents.T if documents.dim() == 2 else torch.einsum("qd,qcd->qc", queries, documents)


def fit_exit_layer(
    teacher: Matryoshka2DEncoder, depth: int, rows: Rows, texts: list[str], asked: list[str], training: Training, epochs: int = LAYER_EPOCHS,
    replay: _Replay | None = None, ranked: torch.Tensor | None = None, show_progress: bool = False, retrained: int = 1,
    exit_layer_start: str = "last",
) -> tuple[list[torch.nn.Module], ExitHead, Rows]:
    """A retrained copy of layer `depth` (of its last `retrained` layers: all `depth` of them make a
    distilled student), the last one started from the weights of the model's last layer
    (`exit_layer_start` "last", the default: it already writes into the teacher's space, and keeps text
    unlike the corpus far better than the layer it replaces) or of its own ("own"), and a linear head
    after pooling (started at the ridge solution on what the started layers give, for the held-out
    texts and up to `MAX_START_DOCUMENTS` in all), trained together (the base layers below stay frozen)
    to give the teacher's full-depth vectors of the texts and pseudo-queries, plus
    `RANKING_WEIGHT` times the KL divergence from the teacher's softmax over documents to the student's
    for each pseudo-query, twice: over every document at full depth (cross depth) and over the batch's
    documents through the layer (same depth). `epochs`
    epochs, Adam (the layer at `LAYER_LEARNING_RATE`, the head at `LEARNING_RATE`), one-cycle. The layers
    below run once, in the teacher's pass, not once a step, where `replay` kept their output within its
    budget (the output of the first `depth` - 1 layers: one layer retrained). Also returns the documents
    `ranked` marks (default: the held-out ones) and their queries pooled through the layers."""
    check_int_in_range("retrained", retrained, 1, depth)
    if replay is not None and retrained != 1:
        raise ValueError("a replay holds the output of every layer but the last: it serves one retrained layer")
    loaded = teacher.loaded_model
    check_choice("exit_layer_start", exit_layer_start, EXIT_LAYER_STARTS)
    start_layer = len(loaded.layers) if exit_layer_start == "last" else depth
    fitting = rows.side(fitting=True)
    loaded.model.requires_grad_(False)  # frozen: no graph through the layers below (inference never needs one)
    # copies of the layers at their own positions (what a folder's exit layer is built as), the last given the start's weights
    # where its module has them alike (ModernBERT's first layer has no attention norm: it keeps its own there)
    layers = [copy.deepcopy(loaded.layers[index]) for index in range(depth - retrained, depth)]
    own = layers[-1].state_dict()
    start = {name: weight for name, weight in loaded.layers[start_layer - 1].state_dict().items() if name in own and own[name].shape == weight.shape}
    layers[-1].load_state_dict(start, strict=False)
    view = shallow_view(loaded.model, loaded.stack, depth, layers)
    documents, fitting_queries = _texts_of(rows, texts, asked, ~rows.held)
    replay = replay if replay is not None and replay.states is not None else None
    trained = view if replay is None else shallow_view(loaded.model, loaded.stack, depth, layers, below=replay)
    # bfloat16 products where the device runs them natively (about 1.5 times faster on a recent cpu); float32 elsewhere
    products = torch.autocast(teacher.device.type, dtype=torch.bfloat16, enabled=bf16_supported(teacher.device))

    def through(batch: list[str], prompt: str) -> torch.Tensor:
        return teacher.pooled_through(trained, batch, prompt, before_batch=None if replay is None else replay.load)

    def pooled(batch: list[str], prompt: str) -> torch.Tensor:
        with products:
            return through(batch, prompt).float()

    # the ridge head maps what the started layers give: the plain cut's pooled states where they are the depth's own
    started = rows if start_layer == depth else _pooled_through(teacher, pooled, rows, texts, asked, rows.held_and_drawn(training.seed, MAX_START_DOCUMENTS))
    head = fit_ridge(*started.side(fitting=True).pointwise("shared"), *started.side(fitting=False).pointwise("shared"))
    for module in (*layers, head):
        module.requires_grad_(True)
    rates = (LAYER_LEARNING_RATE, LEARNING_RATE)
    weights = [weight for layer in layers for weight in layer.parameters()]
    optimiser = torch.optim.Adam([{"params": weights, "lr": rates[0]}, {"params": list(head.parameters()), "lr": rates[1]}])
    text_batch, query_batch = LAYER_BATCH
    steps = max(1, -(-len(documents) * epochs // text_batch))  # the epochs' orders run on into each other
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=list(rates), total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(training.seed + depth)
    order = torch.cat([torch.randperm(len(documents), generator=generator) for _ in range(epochs)])

    def vectors(batch: list[str], prompt: str) -> torch.Tensor:
        return torch.nn.functional.normalize(head(pooled(batch, prompt)), dim=1)

    def ranking(student: torch.Tensor, targets: torch.Tensor, documents: torch.Tensor, document_targets: torch.Tensor) -> torch.Tensor:
        teacher_scores = torch.log_softmax(targets @ document_targets.T / training.temperature, 1)
        student_scores = torch.log_softmax(student @ documents.T / training.temperature, 1)
        return RANKING_WEIGHT * torch.nn.functional.kl_div(student_scores, teacher_scores, log_target=True, reduction="batchmean")

    for step in tqdm(range(steps), desc=f"exit layer {depth}" if retrained == 1 else f"layers {depth - retrained + 1}-{depth}", unit="step", disable=not show_progress):  # minutes on a large corpus
        picked = order[step * text_batch : (step + 1) * text_batch]
        batch_documents, batch_targets = vectors([documents[i] for i in picked.tolist()], teacher.document_prompt), fitting.document_targets[picked]
        value = 1 - (batch_documents * batch_targets).sum(1).mean()
        if fitting_queries:
            asked_now = torch.randint(len(fitting_queries), (query_batch,), generator=generator)
            student = vectors([fitting_queries[i] for i in asked_now.tolist()], teacher.query_prompt)
            targets = fitting.query_targets[asked_now]
            value = value + 1 - (student * targets).sum(1).mean()
            value = value + ranking(student, targets, rows.document_targets, rows.document_targets)  # cross depth: every document
            value = value + ranking(student, targets, batch_documents, batch_targets)  # same depth: the batch's documents through the layer
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
        schedule.step()
    for layer in layers:
        layer.requires_grad_(False)
    head.eval().requires_grad_(False)
    return layers, head, _pooled_through(teacher, through, rows, texts, asked, rows.held if ranked is None else ranked)  # in float32, as the folder runs the layer


class _Replay(torch.nn.Module):
    """Stands in for the frozen layers below an exit layer while it trains: hands on their output for
    the batch, kept from the teacher's pass over the texts, so that a step runs the exit layer alone
    (run again on every text in every epoch, the layers below cost as much as the step itself)."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.states: dict[tuple[int, ...], torch.Tensor] | None = {}  # None: over the budget, nothing kept
        self.budget = budget  # bytes still free
        self.as_tuple = False
        self.batch = torch.empty(0)

    def keep(self, token_ids: list[list[int]], output: Any) -> None:
        """Keep each text's rows of `output`, the layers' output for a batch of `token_ids`; past the budget, nothing."""
        if self.states is None:
            return
        self.as_tuple = isinstance(output, tuple)
        hidden = output[0] if self.as_tuple else output
        for row, ids in enumerate(token_ids):
            self.states[tuple(ids)] = hidden[row, : len(ids)].clone()
            self.budget -= len(ids) * hidden.shape[-1] * hidden.element_size()
        if self.budget < 0:
            self.states = None

    def load(self, token_ids: list[list[int]]) -> None:
        """Set the states of the batch about to run (its token ids), right-padded as the encoder pads the ids."""
        assert self.states is not None, "kept within the budget"
        self.batch = torch.nn.utils.rnn.pad_sequence([self.states[tuple(ids)] for ids in token_ids], batch_first=True)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if hidden_states.shape != self.batch.shape:
            raise RuntimeError(f"the replayed states {tuple(self.batch.shape)} are not those of the batch running {tuple(hidden_states.shape)}")
        return (self.batch,) if self.as_tuple else self.batch


@contextlib.contextmanager
def _keeping(teacher: Matryoshka2DEncoder, replays: dict[int, _Replay]) -> Iterator[Callable[[list[list[int]]], None]]:
    """While the teacher's passes run (`pooled_layerwise(..., before_batch=...)` with what this yields):
    each replay of depth d keeps the output of the first d - 1 layers for every text."""
    batch: list[list[int]] = []

    def before_batch(token_ids: list[list[int]]) -> None:
        batch[:] = token_ids

    layers = teacher.loaded_model.layers
    hooks = [
        layers[depth - 2].register_forward_hook(lambda module, inputs, output, replay=replay: replay.keep(batch, output))
        for depth, replay in replays.items()
    ]
    try:
        yield before_batch
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def _pooled_through(
    teacher: Matryoshka2DEncoder, pooled: Callable[[list[str], str], torch.Tensor], rows: Rows, texts: list[str], asked: list[str], keep: torch.Tensor
) -> Rows:
    """`rows.subset(keep)` with its documents and queries pooled by `pooled` (texts and their prompt:
    through an exit layer's depth) instead."""
    documents, queries = _texts_of(rows, texts, asked, keep)
    return replace(rows.subset(keep), documents=pooled(documents, teacher.document_prompt), queries=pooled(queries, teacher.query_prompt))


def _layer_or_head(
    plain: Rows, through: Rows, layer_head: ExitHead, query_head: ExitHead, document_head: ExitHead, head: DepthResult, choose: bool = True
) -> DepthResult:
    """The exit layer against the depth's best head, on the same documents (`plain`: as the head sees
    them, `through`: through the layer): agreement with the teacher's rankings of the held-out queries,
    then held-out cosine. The layer is kept where it ranks better (on a few hundred texts it may not),
    or always when not `choose`."""
    held, held_through = plain.side(fitting=False), through.side(fitting=False)
    identity = torch.nn.Identity()
    tried = {"layer": mean_cosine(layer_head, held_through.documents, held.document_targets), head.chosen: head.cosine}
    agreements = {"layer": agreement(through, layer_head, layer_head), head.chosen: agreement(plain, query_head, document_head)}
    raw = agreement(plain, identity, identity)
    if not choose or (agreements["layer"], tried["layer"]) > (agreements[head.chosen], tried[head.chosen]):
        return DepthResult("layer", head.raw_cosine, tried, agreements=agreements, raw_agreement=raw)
    return replace(head, tried=tried, agreements=agreements, raw_agreement=raw)


def _write_folder(
    teacher: Matryoshka2DEncoder, heads: dict[int, ExitHead], query_heads: dict[int, ExitHead], report: AdaptReport, out: Path,
    choices: dict[str, Any], exit_layers: dict[int, torch.nn.Module],
) -> None:
    """The base model's files, unchanged, plus the heads; written aside and moved in at the end."""
    source = teacher.source
    folder = source.local_dir
    if folder is None:
        config = source.file("config.json")
        assert config is not None, "the teacher was loaded from it"
        folder = config.parent
    with staged_folder(out, "mm2d-adapt") as staging:
        shutil.copytree(folder, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git", HEADS_FILE, HEADS_CONFIG))
        description = {
            "teacher": {"model": teacher.model_name, "weights": teacher.fingerprint["weights"], "num_layers": teacher.max_layers},
            "pooling": teacher.pooling,
            "max_length": teacher.max_length,
            "prompts": {"document": teacher.document_prompt, "query": teacher.query_prompt},
            **choices,
            "texts": report.texts,
            "held_out": report.held_out,
            "pseudo_query_count": report.pseudo_queries,
            "heads": {
                str(depth): {
                    "chosen": result.chosen, "held_out_agreement": result.agreement, "raw_agreement": result.raw_agreement,
                    "held_out_cosine": result.cosine, "raw_cosine": result.raw_cosine, "tried": result.tried, "agreements": result.agreements,
                }
                for depth, result in report.depths.items()
            },
        }
        save_exit_heads(staging, heads, description, query_heads, exit_layers)
