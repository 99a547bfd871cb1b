"""The embedding pipeline: text -> tokens -> kept layers -> pooling -> kept dimensions -> vector."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mm2d_integrations.loading import LoadedModel, check_int_in_range, load_model
from mm2d_integrations.pooling import check_pooling, pool

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The given device, or the best one this machine has (cuda, then mps, then cpu)."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


PRECISIONS = ("float32", "bf16")


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively (elsewhere they are emulated, and slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True


def resolve_precision(precision: str, device: torch.device) -> str:
    """`float32` (exact) or `bf16` (autocast: bfloat16 products, float32 weights and pooling)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and not bf16_supported(device):
        warnings.warn(f"{device} has no native bfloat16 support: precision falls back to float32", stacklevel=3)
        return "float32"
    return precision


def token_budget_batches(lengths: Sequence[int], max_texts: int, max_tokens: int | None) -> list[list[int]]:
    """Indices grouped longest first, each group at most `max_texts` texts and, when given, at most
    `max_tokens` padded tokens, so that long texts travel in smaller batches."""
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        fits = current is not None and len(current) < max_texts and (
            max_tokens is None or (len(current) + 1) * lengths[current[0]] <= max_tokens
        )
        if fits:
            current.append(index)
        else:
            batches.append([index])
    return batches


def truncate_dimensions(vectors: np.ndarray, dimensions: int, normalize: bool = True) -> np.ndarray:
    """The first `dimensions` components of each row, L2-normalised again (the model card's recipe)."""
    kept = np.array(vectors[:, :dimensions], dtype=np.float32)  # a copy: the caller's vectors stay as they are
    if normalize:
        norms = np.linalg.norm(kept, axis=1, keepdims=True)
        kept /= np.maximum(norms, 1e-12)
    return kept


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def check_texts(texts: Any) -> list[str]:
    """`texts` as a list of str, or a TypeError naming the offending item.

    Lone surrogates, which no tokenizer accepts, become U+FFFD.
    """
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
    checked = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] must be str, got {type(text).__name__}")
        checked.append(_LONE_SURROGATE.sub("\ufffd", text))
    return checked


# Bounded concurrency for the async methods: more threads than cores only slow each other down.
_WORKERS = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1)), thread_name_prefix="mm2d")


async def _off_loop(function: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str]) -> np.ndarray:
    return await asyncio.get_running_loop().run_in_executor(_WORKERS, function, texts)


class Matryoshka2DEncoder:
    """A sentence embedder cut in depth (`num_layers`) and width (`dimensions`).

    Texts longer than `max_length` tokens (prompt included) are truncated.
    """

    def __init__(
        self,
        model_name_or_path: str | Path,
        *,
        num_layers: int | None = None,
        dimensions: int | None = None,
        pooling: str | None = None,
        normalize: bool = True,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        precision: str = "float32",
        max_batch_tokens: int | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
    ) -> None:
        self.batch_size = check_int_in_range("batch_size", batch_size, 1, 1 << 20)
        # A token budget (default 128 tokens a text) batches short texts densely and long ones thinly:
        # measured 8% faster than a fixed count on mixed lengths (docs/performance.md).
        self.max_batch_tokens = check_int_in_range(
            "max_batch_tokens", 128 * batch_size if max_batch_tokens is None else max_batch_tokens, 1, 1 << 40
        )
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.precision = resolve_precision(precision, self.device)
        self._loaded: LoadedModel = load_model(
            model_name_or_path,
            num_layers=num_layers,
            device=self.device,
            dtype=self.dtype,
            revision=revision,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
        )
        settings = self._loaded.settings
        self.normalize = bool(normalize)
        self._pooling = check_pooling(pooling or settings.pooling or "mean")
        self._loaded.exit_heads.check_pooling(self._pooling)
        self.query_prompt = query_prompt if query_prompt is not None else settings.query_prompt or ""
        self.document_prompt = document_prompt if document_prompt is not None else settings.document_prompt or ""
        self.max_length = (
            check_int_in_range("max_length", max_length, 1, 1 << 20) if max_length is not None else settings.max_length
        )
        self._dimensions = (
            self.max_dimensions
            if dimensions is None
            else check_int_in_range("dimensions", dimensions, 1, self.max_dimensions)
        )

    @property
    def model_name(self) -> str:
        return self._loaded.source.name

    @property
    def num_layers(self) -> int:
        return self._loaded.num_layers

    @property
    def max_layers(self) -> int:
        return self._loaded.max_layers

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def max_dimensions(self) -> int:
        return self._loaded.hidden_size

    @property
    def pooling(self) -> str:
        return self._pooling

    @property
    def source(self) -> Any:
        """Where the weights came from (see `loading.ModelSource`)."""
        return self._loaded.source

    def with_dimensions(self, dimensions: int) -> Matryoshka2DEncoder:
        """This encoder keeping only its first `dimensions` components: the same loaded model and options.

        A copy rather than a new encoder, so that options the constructor cannot be given again
        (allow_pickle, trust_remote_code) carry over and nothing is loaded twice.
        """
        narrowed = copy.copy(self)
        narrowed._dimensions = check_int_in_range("dimensions", dimensions, 1, self.dimensions)
        return narrowed

    def options(self) -> dict[str, Any]:
        """The `ENCODER_OPTIONS` that rebuild this encoder (adapters take them as fields)."""
        values = {name: getattr(self, name) for name in ENCODER_OPTIONS}
        return {**values, "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What determines the vectors: two encoders with equal fingerprints share one embedding space."""
        return {
            "model": self.model_name,
            "weights": self._loaded.weights_id,
            "num_layers": self.num_layers,
            "dimensions": self.dimensions,
            "pooling": self.pooling,
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
            "normalize": self.normalize,
            "max_length": self.max_length,
        }

    def encode_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Document vectors, shape (n, dimensions), float32, in input order."""
        return self.encode(texts, prompt=self.document_prompt, show_progress=show_progress)

    def encode_queries(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Query vectors (the query prompt prepended), shape (n, dimensions), float32."""
        return self.encode(texts, prompt=self.query_prompt, show_progress=show_progress)

    async def aencode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """`encode_documents` on a worker thread, so the event loop keeps running."""
        return await _off_loop(self.encode_documents, texts)

    async def aencode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """`encode_queries` on a worker thread, so the event loop keeps running."""
        return await _off_loop(self.encode_queries, texts)

    def encode(self, texts: Sequence[str], *, prompt: str = "", show_progress: bool = False) -> np.ndarray:
        vectors = self.encode_depths(texts, [self.num_layers], prompt=prompt, show_progress=show_progress)
        return truncate_dimensions(vectors[self.num_layers], self.dimensions, self.normalize)

    def encode_depths(
        self, texts: Sequence[str], depths: Iterable[int], *, prompt: str = "", show_progress: bool = False
    ) -> dict[int, np.ndarray]:
        """Vectors at several depths from one forward pass: {depth: (n, max_dimensions) array}.

        Each equals what an encoder cut to that depth gives; vectors keep every dimension
        (normalised when `normalize`), so any `truncate_dimensions` of them is exact too.
        """
        checked = check_texts(texts)
        wanted = sorted({check_int_in_range("depth", depth, 1, self.num_layers) for depth in depths})
        if not wanted:
            raise ValueError(f"depths must name at least one depth in [1, {self.num_layers}]")
        results = {depth: np.empty((len(checked), self.max_dimensions), np.float32) for depth in wanted}
        token_ids = self._token_ids([prompt + text for text in checked])
        batches = token_budget_batches([len(ids) for ids in token_ids], self.batch_size, self.max_batch_tokens)
        for batch in tqdm(batches, desc="embedding", unit="batch", disable=not show_progress or len(batches) < 2):
            pooled = self._forward([token_ids[index] for index in batch], wanted)
            for depth, vectors in pooled.items():
                results[depth][batch] = truncate_dimensions(vectors, self.max_dimensions, self.normalize)
        return results

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        with self._loaded.tokenizer_lock:  # fast tokenizers are not safe to share across threads
            return self._loaded.tokenizer(texts, truncation=True, max_length=self.max_length, return_attention_mask=False)["input_ids"]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _pad(self, token_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and their attention mask."""
        pad = self._loaded.tokenizer.pad_token_id or 0
        longest = max(len(ids) for ids in token_ids)
        input_ids = np.full((len(token_ids), longest), pad, dtype=np.int64)
        mask = np.zeros((len(token_ids), longest), dtype=np.int64)
        for row, ids in enumerate(token_ids):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        return torch.from_numpy(input_ids).to(self.device), torch.from_numpy(mask).to(self.device)

    @torch.inference_mode()
    def _forward(self, token_ids: list[list[int]], depths: list[int]) -> dict[int, np.ndarray]:
        input_ids, attention_mask = self._pad(token_ids)
        with self._autocast():
            output = self._loaded.model(
                input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=depths != [self.num_layers]
            )
        final_norm = self._loaded.final_norm
        pooled = {}
        for depth in depths:
            if depth == self.num_layers:
                hidden = output.last_hidden_state
            else:
                hidden = output.hidden_states[depth]
                hidden = final_norm(hidden) if final_norm is not None else hidden
            vectors = pool(hidden.float(), attention_mask, self.pooling)
            vectors = self._loaded.exit_heads.apply(depth, vectors)  # none at full depth
            pooled[depth] = vectors.cpu().numpy()
        return pooled

    def __repr__(self) -> str:
        return (
            f"Matryoshka2DEncoder({self.model_name!r}, num_layers={self.num_layers}/{self.max_layers}, "
            f"dimensions={self.dimensions}/{self.max_dimensions}, pooling={self.pooling!r})"
        )


# The encoder's options that adapters expose under the same names.
ENCODER_OPTIONS = (
    "num_layers", "dimensions", "pooling", "normalize", "query_prompt", "document_prompt",
    "max_length", "batch_size", "device", "dtype", "precision",
)


def encoder_from_fields(model_name: str, fields: Any, model_kwargs: dict[str, Any] | None = None) -> Matryoshka2DEncoder:
    """An encoder configured from an adapter's same-named fields (those it has), plus `model_kwargs`."""
    options = {name: getattr(fields, name) for name in ENCODER_OPTIONS if hasattr(fields, name)}
    overlap = set(options) & set(model_kwargs or {})
    if overlap:
        raise ValueError(f"set {', '.join(sorted(overlap))} as fields, not in model_kwargs")
    return Matryoshka2DEncoder(model_name, **options, **(model_kwargs or {}))


def require(module: str, extra: str) -> None:
    """Fail early with the install command when an optional dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{module} is not installed; run: pip install 'mm2d-integrations[{extra}]'")
