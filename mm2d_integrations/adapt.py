"""Make an ordinary embedding model truncatable in depth, without labels: learn exit heads.

The full-depth model is the frozen teacher. One forward pass over unlabeled text gives the pooled
state of every depth; for each shallow depth a small head is fitted to map it onto the teacher's
normalised embedding: closed-form ridge regression, a low-rank map, or a linear map plus a small
MLP (both trained with a cosine loss, starting from the ridge solution). The one with the best mean
cosine to the teacher on a held-out part of the same text is kept. The base weights are copied
unchanged beside the heads, so full depth stays bit-identical.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm2d_integrations.documents import load_folder, split_documents
from mm2d_integrations.encoder import Matryoshka2DEncoder
from mm2d_integrations.exit_heads import HEADS_CONFIG, HEADS_FILE, ExitHead, save_exit_heads
from mm2d_integrations.folders import check_new_folder, staged_folder
from mm2d_integrations.validation import check_int_in_range

__all__ = ["AdaptReport", "BATCH", "DepthResult", "EPOCHS", "HELD_OUT_SHARE", "LEARNING_RATE", "LOW_RANK", "MAX_HELD_OUT", "MAX_TEXTS", "METHODS", "MIN_TEXTS", "RIDGE_PENALTIES", "adapt", "fit_head", "fit_ridge", "mean_cosine", "read_corpus"]

METHODS = ("auto", "ridge", "lowrank", "mlp")
MIN_TEXTS = 10
MAX_TEXTS = 20_000  # default cap: every depth's pooled vectors of every text are held in memory
HELD_OUT_SHARE = 0.1
MAX_HELD_OUT = 2_000
RIDGE_PENALTIES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # times the number of texts, on standardised input
LOW_RANK = 128  # at most half the width
EPOCHS = 10
BATCH = 128
LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class DepthResult:
    """What was tried at one depth, as mean cosine to the teacher on the held-out texts."""

    kind: str  # the head kept
    raw_cosine: float  # the plain cut: the pooled state itself, without a head
    tried: dict[str, float]  # kind -> held-out cosine

    @property
    def cosine(self) -> float:
        return self.tried[self.kind]


@dataclass
class AdaptReport:
    out: Path
    model: str
    texts: int
    held_out: int
    depths: dict[int, DepthResult] = field(default_factory=dict)
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


def adapt(
    model: str | Path,
    texts: Sequence[str],
    out: str | Path,
    *,
    layers: Sequence[int] | None = None,
    method: str = "auto",
    max_texts: int | None = MAX_TEXTS,
    epochs: int = EPOCHS,
    mlp_hidden: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    device: str | None = None,
    show_progress: bool = False,
) -> AdaptReport:
    """Learn exit heads for `layers` (default every depth below full) and write a complete model folder to `out`."""
    started = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    check_int_in_range("epochs", epochs, 1, 10_000)
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
    hidden = 4 * teacher.max_dimensions if mlp_hidden is None else check_int_in_range("mlp_hidden", mlp_hidden, 1, 1 << 16)
    report = AdaptReport(out, teacher.model_name, len(texts), min(MAX_HELD_OUT, max(2, int(len(texts) * HELD_OUT_SHARE))))

    clock = time.perf_counter()
    pooled = _pooled_states(teacher, texts, [*depths, full], show_progress)
    report.encode_seconds = time.perf_counter() - clock
    target = torch.nn.functional.normalize(pooled.pop(full), dim=1)
    held, fit = _split(len(texts), len(target) // len(texts), report.held_out, seed)
    heads = {}
    for depth in depths:
        heads[depth], report.depths[depth] = fit_head(
            pooled[depth][fit], target[fit], pooled[depth][held], target[held], method, hidden, epochs, seed
        )
    _write_folder(teacher, heads, report, out, method)
    report.seconds = time.perf_counter() - started
    return report


def _sample(texts: list[str], max_texts: int | None, seed: int) -> list[str]:
    if len(texts) < MIN_TEXTS:
        raise ValueError(f"the corpus has {len(texts)} distinct texts; adapting needs at least {MIN_TEXTS}")
    if max_texts is not None and len(texts) > check_int_in_range("max_texts", max_texts, MIN_TEXTS, 1 << 30):
        texts = random.Random(seed).sample(texts, max_texts)
    return texts


def _split(texts: int, copies: int, held_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out and fitting rows; a text's copies (one per prompt) fall on the same side."""
    order = torch.randperm(texts, generator=torch.Generator().manual_seed(seed))
    rows = [torch.cat([part + copy * texts for copy in range(copies)]) for part in (order[:held_out], order[held_out:])]
    return rows[0], rows[1]


def _pooled_states(
    teacher: Matryoshka2DEncoder, texts: list[str], depths: list[int], show_progress: bool
) -> dict[int, torch.Tensor]:
    """Un-normalised pooled vectors of every depth, one pass per prompt. Texts are seen with the
    document prompt and, where the model has another, with the query prompt too (queries get it)."""
    prompts = dict.fromkeys([teacher.document_prompt, teacher.query_prompt])
    passes = [teacher.pooled_layerwise(texts, depths, prompt=prompt, show_progress=show_progress) for prompt in prompts]
    return {depth: torch.from_numpy(np.concatenate([vectors[depth] for vectors in passes])) for depth in depths}


def fit_head(
    inputs: torch.Tensor, targets: torch.Tensor, held_inputs: torch.Tensor, held_targets: torch.Tensor,
    method: str, mlp_hidden: int, epochs: int, seed: int,
) -> tuple[ExitHead, DepthResult]:
    """The best head of those `method` allows, by mean cosine to the teacher on the held-out texts."""
    raw = mean_cosine(lambda pooled: pooled, held_inputs, held_targets)
    ridge = fit_ridge(inputs, targets, held_inputs, held_targets)
    candidates = {"ridge": ridge}
    width = inputs.shape[1]
    if method in ("auto", "lowrank"):
        candidates["lowrank"] = _trained(_low_rank_from(ridge, min(LOW_RANK, max(1, width // 2))), inputs, targets, epochs, seed)
    if method in ("auto", "mlp"):
        candidates["mlp"] = _trained(_mlp_from(ridge, mlp_hidden, seed), inputs, targets, epochs, seed)
    if method != "auto":
        candidates = {method: candidates[method]}
    tried = {kind: mean_cosine(head, held_inputs, held_targets) for kind, head in candidates.items()}
    kind = max(tried, key=tried.__getitem__)
    return candidates[kind].eval(), DepthResult(kind, raw, tried)


@torch.no_grad()
def mean_cosine(head: Any, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(head(inputs), targets).mean())


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
    left, values, right = torch.linalg.svd(ridge.linear.weight.detach(), full_matrices=False)
    with torch.no_grad():
        head.mean.copy_(ridge.mean)
        head.scale.copy_(ridge.scale)
        head.linear[0].weight.copy_(values[:rank, None] * right[:rank])
        head.linear[1].weight.copy_(left[:, :rank])
        head.linear[1].bias.copy_(ridge.linear.bias)
    return head


def _mlp_from(ridge: ExitHead, hidden: int, seed: int) -> ExitHead:
    """Ridge map plus an MLP whose output starts at zero: training begins where ridge ended."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = ExitHead("mlp", len(ridge.mean), hidden)
    head.load_state_dict({**head.state_dict(), **ridge.state_dict()})
    with torch.no_grad():
        head.mlp[2].weight.zero_()
        head.mlp[2].bias.zero_()
    return head


def _trained(head: ExitHead, inputs: torch.Tensor, targets: torch.Tensor, epochs: int, seed: int) -> ExitHead:
    """Adam with a one-cycle schedule on 1 - cosine(head(x), teacher)."""
    head.train()
    parameters = [parameter for parameter in head.parameters() if parameter.requires_grad]
    optimiser = torch.optim.Adam(parameters, lr=LEARNING_RATE)
    batches = -(-len(inputs) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=LEARNING_RATE, total_steps=epochs * batches)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs), generator=generator).split(BATCH):
            loss = 1 - torch.nn.functional.cosine_similarity(head(inputs[batch]), targets[batch]).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return head.eval()


def _write_folder(teacher: Matryoshka2DEncoder, heads: dict[int, ExitHead], report: AdaptReport, out: Path, method: str) -> None:
    """The base model's files, unchanged, plus the heads; written aside and moved in at the end."""
    source = teacher.source
    folder = source.local_dir or source.file("config.json").parent
    with staged_folder(out, "mm2d-adapt") as staging:
        shutil.copytree(folder, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git", HEADS_FILE, HEADS_CONFIG))
        description = {
            "teacher": {"model": teacher.model_name, "weights": teacher.fingerprint["weights"], "num_layers": teacher.max_layers},
            "pooling": teacher.pooling,
            "max_length": teacher.max_length,
            "prompts": {"document": teacher.document_prompt, "query": teacher.query_prompt},
            "method": method,
            "texts": report.texts,
            "held_out": report.held_out,
            "heads": {
                str(depth): {"held_out_cosine": result.cosine, "raw_cosine": result.raw_cosine, "tried": result.tried}
                for depth, result in report.depths.items()
            },
        }
        save_exit_heads(staging, heads, description)
