"""The embedding pipeline: text -> tokens -> kept layers -> pooling -> kept dimensions -> vector."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mm2d_integrations.core.checkpoint import SHARED_SPACE_DEPTHS
from mm2d_integrations.core.int8 import calibration_texts, int8_model
from mm2d_integrations.core.loading import LoadedModel, load_model
from mm2d_integrations.core.onnx import onnx_model
from mm2d_integrations.core.options import EncoderOptions
from mm2d_integrations.core.pooling import check_pooling, pool
from mm2d_integrations.core.runtime import dtype_name, resolve_backend, resolve_compute_precision, resolve_device, resolve_dtype
from mm2d_integrations.core.source import ModelSource
from mm2d_integrations.core.validation import check_int_in_range, check_text, check_texts

__all__ = [
    "KEPT_ENCODERS", "SPACE_KEYS", "EncoderHandle", "EncoderRecipe", "Matryoshka2DEncoder", "space_differences", "space_id_of", "space_items", "space_of",
    "token_budget_batches",
    "truncate_dimensions",
]

# What changes the vectors; the model's name is shown but the weights identify it.
SPACE_KEYS = ("weights", "num_layers", "dimensions", "pooling", "query_prompt", "document_prompt", "normalize", "max_length", "include_prompt")
# Keys added after stored configurations existed, with the value those configurations meant: a key at
# that value is left out of the space, so that existing collections and caches keep their space id.
_LATER_KEYS = {"include_prompt": True}


def space_of(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The `SPACE_KEYS` values of a fingerprint or stored configuration, later keys at their default left out."""
    space = {key: fingerprint.get(key, _LATER_KEYS.get(key)) for key in SPACE_KEYS}
    return {key: value for key, value in space.items() if key not in _LATER_KEYS or value != _LATER_KEYS[key]}


def space_items(fingerprint: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """`space_of` as a hashable tuple: the space a recipe records, whatever keys the fingerprint lacks."""
    return tuple(space_of(fingerprint).items())


def space_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The `SPACE_KEYS` in which two fingerprints (or stored configurations) differ."""
    stored_space, current_space = space_of(stored), space_of(current)
    return [key for key in SPACE_KEYS if stored_space.get(key) != current_space.get(key)]


def space_id_of(fingerprint: Mapping[str, Any]) -> str:
    """16 hex digits that change whenever a key of `SPACE_KEYS` does: the embedding space's short name."""
    space = json.dumps(space_of(fingerprint), sort_keys=True)
    return hashlib.sha256(space.encode("utf-8")).hexdigest()[:16]


def token_budget_batches(lengths: Sequence[int], max_texts: int, max_tokens: int | None) -> list[list[int]]:
    """Indices grouped longest first, each group at most `max_texts` texts and, when given, at most
    `max_tokens` padded tokens, so that long texts travel in smaller batches."""
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        if current is not None and len(current) < max_texts and (
            max_tokens is None or (len(current) + 1) * lengths[current[0]] <= max_tokens
        ):
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


@functools.cache
def _workers() -> ThreadPoolExecutor:
    """The async methods' threads, made on their first call (nothing is started at import); bounded,
    as more threads than cores only slow each other down."""
    return ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1)), thread_name_prefix="mm2d")


async def _off_loop(function: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str]) -> np.ndarray:
    return await asyncio.get_running_loop().run_in_executor(_workers(), function, texts)


def _depth_to_load(num_layers: Any, query_num_layers: Any) -> tuple[int | None, str]:
    """The depth to load (None: all layers), the deeper of documents' and queries', and its option's name."""
    if num_layers is None:
        return None, "num_layers"
    deeper_queries = isinstance(query_num_layers, int) and isinstance(num_layers, int) and query_num_layers > num_layers
    return (query_num_layers, "query_num_layers") if deeper_queries else (num_layers, "num_layers")


class Matryoshka2DEncoder:
    """A sentence embedder cut in depth (`num_layers`) and width (`dimensions`).

    Queries may run at another depth (`query_num_layers`) where the model declares that both depths
    share one embedding space (`shared_space_depths`); one model, cut to the deeper, serves both.
    Texts longer than `max_length` tokens (prompt included) are truncated.
    """

    def __init__(self, model_name_or_path: str | Path, options: EncoderOptions | None = None, /, **overrides: Any) -> None:
        """`overrides`: any `EncoderOptions` field by name (num_layers=..., dimensions=...), over `options`."""
        given = EncoderOptions.of(options, **overrides)
        self.batch_size = check_int_in_range("batch_size", given.batch_size, 1, 1 << 20)
        # A token budget (default 128 tokens a text) batches short texts densely and long ones thinly:
        # measured 8% faster than a fixed count on mixed lengths (docs/performance.md).
        self.max_batch_tokens = check_int_in_range(
            "max_batch_tokens", 128 * self.batch_size if given.max_batch_tokens is None else given.max_batch_tokens, 1, 1 << 40
        )
        self.device = resolve_device(given.device)
        self.dtype = resolve_dtype(given.dtype)
        self.compute_precision = resolve_compute_precision(given.compute_precision, self.device)
        depth, depth_argument = _depth_to_load(given.num_layers, given.query_num_layers)
        self._loaded: LoadedModel = load_model(
            model_name_or_path,
            num_layers=depth,
            device=self.device,
            dtype=self.dtype,
            revision=given.revision,
            trust_remote_code=given.trust_remote_code,
            allow_pickle=given.allow_pickle,
            show_progress=given.show_progress,
            cache_folder=given.cache_folder,
            depth_argument=depth_argument,
            max_length=given.max_length,
        )
        loaded = self._loaded.num_layers
        self._num_layers = loaded if given.num_layers is None else check_int_in_range("num_layers", given.num_layers, 1, loaded)
        self._query_num_layers = (
            self._num_layers
            if given.query_num_layers is None
            else check_int_in_range("query_num_layers", given.query_num_layers, 1, loaded)
        )
        self._check_query_depth()
        self.backend = resolve_backend(given.backend, self.device, self.dtype)
        if self._loaded.exit_heads.layers and (self.backend != "torch" or self.compute_precision == "int8"):
            raise ValueError(
                f"model {self._loaded.source.name!r} has exit layers (mm2d adapt --exit-layers), which the "
                f"{'int8 compute precision' if self.backend == 'torch' else repr(self.backend) + ' backend'} does not run: "
                "use backend='torch' without int8, or export one depth (mm2d export, sentence-transformers or onnx format)"
            )
        self._onnx = onnx_model(self._loaded) if self.backend == "onnx" else None
        if self.compute_precision == "int8" and self.backend != "torch":
            raise ValueError(f"compute_precision='int8' runs with backend='torch', not {self.backend!r}")
        settings = self._loaded.settings
        self.normalize = bool(given.normalize)
        self.show_progress = bool(given.show_progress)
        # As in sentence-transformers, a checkpoint whose pipeline ends in Normalize gives unit vectors
        # whatever `normalize` says; `normalize` then only decides whether a cut is normalised again.
        self._normalizes_full_width = self.normalize or bool(settings.normalized)
        self._pooling = check_pooling(given.pooling or settings.pooling or "mean")
        self._loaded.exit_heads.check_pooling(self._pooling)
        self.query_prompt = check_text("query_prompt", given.query_prompt if given.query_prompt is not None else settings.query_prompt or "")
        self.document_prompt = check_text(
            "document_prompt", given.document_prompt if given.document_prompt is not None else settings.document_prompt or ""
        )
        # sentence-transformers' Pooling include_prompt=False: the prompt's tokens are attended to but not pooled.
        self.include_prompt = settings.include_prompt is not False
        self._prompt_lengths: dict[str, int] = {}
        # Never more than the model's positions take: load_model refuses a larger given one, lowers the checkpoint's.
        assert settings.max_length is not None, "loading fills in the model's own limit"
        self.max_length = given.max_length if given.max_length is not None else settings.max_length
        dimensions = given.dimensions if given.dimensions is not None else settings.truncate_dim  # the checkpoint's truncate_dim
        self._dimensions = self.max_dimensions if dimensions is None else check_int_in_range("dimensions", dimensions, 1, self.max_dimensions)
        self._given = given
        # What runs the transformer: the loaded model, or its int8 copy (calibrated and made once per process)
        self._runner = int8_model(self._loaded, self._calibrate) if self.compute_precision == "int8" else self._loaded

    @property
    def model_name(self) -> str:
        return self._loaded.source.name

    @property
    def num_layers(self) -> int:
        """The depth of documents, and of the vector space (the fingerprint's)."""
        return self._num_layers

    @property
    def query_num_layers(self) -> int:
        """The depth of queries: `num_layers` unless asked otherwise."""
        return self._query_num_layers

    @property
    def shared_space_depths(self) -> frozenset[int]:
        """Depths whose vectors land in the full-depth space, so that any two of them may serve documents
        and queries: full depth, each depth with an exit head (`mm2d adapt`), and those measured for a
        known model (`settings.SHARED_SPACE_DEPTHS`)."""
        measured = SHARED_SPACE_DEPTHS.get(self.model_name, frozenset())
        return frozenset({self.max_layers, *self._loaded.exit_heads.heads, *measured})

    def _check_query_depth(self) -> None:
        if self.query_num_layers == self.num_layers or {self.query_num_layers, self.num_layers} <= self.shared_space_depths:
            return
        shared = ", ".join(str(depth) for depth in sorted(self.shared_space_depths))
        raise ValueError(
            f"query_num_layers={self.query_num_layers} with num_layers={self.num_layers}: model {self.model_name!r} does "
            f"not declare that these depths share one embedding space, so such queries would not match the documents. "
            f"Depths that share the full-depth space here: {shared}. Leave query_num_layers unset, or give the model "
            "exit heads for the depths you want with `mm2d adapt`"
        )

    @property
    def max_layers(self) -> int:
        return self._loaded.max_layers

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def max_dimensions(self) -> int:
        """The full width of the vectors: the checkpoint's last Dense module's output, else its hidden size."""
        return self._loaded.output_size

    @property
    def trained_pairs(self) -> tuple[tuple[int, int], ...] | None:
        """The (num_layers, dimensions) pairs the model was trained for, where its preset knows them."""
        return self._loaded.settings.trained_pairs

    @property
    def prompts(self) -> dict[str, str]:
        """The checkpoint's named prompts (sentence-transformers' `prompts`), to pass as query_prompt or
        document_prompt; its query and document prompts are the defaults of those options."""
        return dict(self._loaded.settings.prompts or ())

    @property
    def pooling(self) -> str:
        return self._pooling

    @property
    def source(self) -> ModelSource:
        """Where the weights came from."""
        return self._loaded.source

    @property
    def loaded_model(self) -> LoadedModel:
        """The tokenizer, cut transformer and heads this encoder runs (shared: read, do not change)."""
        return self._loaded

    @property
    def transformer_layers(self) -> torch.nn.ModuleList:
        """The kept transformer layers, for hooks that watch them (timing)."""
        return self._loaded.layers

    def with_dimensions(self, dimensions: int) -> Matryoshka2DEncoder:
        """This encoder keeping only its first `dimensions` components: the same loaded model and options.

        A copy rather than a new encoder: nothing is loaded or hashed again.
        """
        narrowed = copy.copy(self)
        narrowed._dimensions = check_int_in_range("dimensions", dimensions, 1, self.dimensions)
        return narrowed

    @property
    def options(self) -> EncoderOptions:
        """The options that rebuild this encoder: depth, width, pooling, prompts and max length as
        resolved; device and compute precision as given, so that a rebuild elsewhere picks that machine's best."""
        return EncoderOptions.of(
            self._given,
            num_layers=self.num_layers,
            query_num_layers=None if self.query_num_layers == self.num_layers else self.query_num_layers,
            dimensions=self.dimensions,
            pooling=self.pooling,
            query_prompt=self.query_prompt,
            document_prompt=self.document_prompt,
            max_length=self.max_length,
            dtype=dtype_name(self.dtype),
        )

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What determines the vectors: two encoders with equal fingerprints share one embedding space.

        That of the documents: a query depth in the same space (`shared_space_depths`) changes nothing stored."""
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
            "include_prompt": self.include_prompt,
        }

    @property
    def recipe(self) -> EncoderRecipe:
        """What rebuilds this encoder in another process (see `EncoderRecipe`)."""
        return EncoderRecipe(self.source.reference, self.options, space_items(self.fingerprint))

    @property
    def space_id(self) -> str:
        """The fingerprint's short stable hash (the model's name aside): a cache namespace that
        changes whenever the vectors would (weights, depth, width, pooling, prompts, normalisation, max length,
        the prompt's part in pooling)."""
        return space_id_of(self.fingerprint)

    def encode_documents(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        """Document vectors, shape (n, dimensions), float32, in input order."""
        return self.encode(texts, prompt=self.document_prompt, show_progress=show_progress)

    def encode_queries(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        """Query vectors (the query prompt prepended, at `query_num_layers`), shape (n, dimensions), float32."""
        return self.encode(texts, prompt=self.query_prompt, num_layers=self.query_num_layers, side="query", show_progress=show_progress)

    async def aencode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """`encode_documents` on a worker thread, so the event loop keeps running."""
        return await _off_loop(self.encode_documents, texts)

    async def aencode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """`encode_queries` on a worker thread, so the event loop keeps running."""
        return await _off_loop(self.encode_queries, texts)

    def encode(
        self, texts: Sequence[str], *, prompt: str = "", num_layers: int | None = None, side: str = "document", show_progress: bool | None = None
    ) -> np.ndarray:
        """Vectors of `texts` with `prompt` prepended, at `num_layers` (default: the documents' depth),
        through `side`'s exit head where the model has one per side."""
        depth = self.num_layers if num_layers is None else num_layers
        vectors = self.encode_layerwise(texts, [depth], prompt=prompt, side=side, show_progress=show_progress)
        return truncate_dimensions(vectors[depth], self.dimensions, self.normalize)

    def encode_layerwise(
        self, texts: Sequence[str], num_layers: Iterable[int], *, prompt: str = "", side: str = "document", show_progress: bool | None = None
    ) -> dict[int, np.ndarray]:
        """Vectors at several `num_layers` from one forward pass: {num_layers: (n, max_dimensions) array}.

        Each equals what an encoder cut to that many layers gives; vectors keep every dimension
        (normalised when `normalize` or when the checkpoint's pipeline normalises), so any
        `truncate_dimensions` of them is exact too. `show_progress` (default: the encoder's option)
        shows a bar over the batches.
        """
        vectors = self.pooled_layerwise(texts, num_layers, prompt=prompt, side=side, show_progress=show_progress)
        if len(self._loaded.dense):
            vectors = {kept: self._dense(pooled) for kept, pooled in vectors.items()}
        if self._normalizes_full_width:
            for kept in vectors.values():
                kept /= np.maximum(np.linalg.norm(kept, axis=1, keepdims=True), 1e-12)
        return vectors

    def pooled_layerwise(
        self, texts: Sequence[str], num_layers: Iterable[int], *, prompt: str = "", side: str = "document", show_progress: bool | None = None,
        before_batch: Callable[[list[list[int]]], None] | None = None,
    ) -> dict[int, np.ndarray]:
        """`encode_layerwise` before any Dense module and normalisation: the pooled states (after the exit
        head of `side`, "document" or "query"), {num_layers: (n, hidden size) array}, that `mm2d adapt` fits its heads on.
        `before_batch` is told each batch's token ids before it runs (adapt keeps layer outputs from this pass)."""
        show_progress = self.show_progress if show_progress is None else show_progress
        checked, prompt = check_texts(texts), check_text("prompt", prompt)
        loaded = self._loaded.num_layers
        wanted = sorted({check_int_in_range("num_layers", kept, 1, loaded) for kept in num_layers})
        if not wanted:
            raise ValueError(f"num_layers must name at least one value in [1, {loaded}]")
        results = {kept: np.empty((len(checked), self._loaded.hidden_size), np.float32) for kept in wanted}
        token_ids = self.tokenize(checked, prompt)
        skipped = self._skipped(prompt)
        batches = self._like_length_batches(token_ids)
        for batch in tqdm(batches, desc="embedding", unit="batch", disable=not show_progress or len(batches) < 2):
            batch_ids = [token_ids[index] for index in batch]
            if before_batch is not None:
                before_batch(batch_ids)
            pooled = self._forward(batch_ids, wanted, skipped, side)
            for kept, vectors in pooled.items():
                results[kept][batch] = vectors
        return results

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        with self._loaded.tokenizer_lock:  # fast tokenizers are not safe to share across threads
            ids: list[list[int]] = self._loaded.tokenizer(texts, truncation=True, max_length=self.max_length, return_attention_mask=False)["input_ids"]
        return ids

    def token_count(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text alone (no prompt, no special tokens, never truncated), counted with this
        model's own tokenizer: what a text splitter measures chunks by."""
        checked = check_texts(texts)
        if not checked:
            return []
        with self._loaded.tokenizer_lock:
            ids = self._loaded.tokenizer(checked, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
        return [len(row) for row in ids]

    def document_token_budget(self) -> int:
        """Tokens a document may take without being truncated: max_length less the document prompt and
        the special tokens."""
        overhead = len(self._token_ids([self.document_prompt])[0])
        return max(1, int(self.max_length) - overhead)

    def _like_length_batches(self, token_ids: list[list[int]]) -> list[list[int]]:
        """Indices of `token_ids` in batches of like length, at most batch_size texts and max_batch_tokens padded tokens each: how every pass runs them."""
        return token_budget_batches([len(ids) for ids in token_ids], self.batch_size, self.max_batch_tokens)

    def _skipped(self, prompt: str) -> int:
        """The tokens at the start of each text that pooling leaves out: the prompt's, unless include_prompt."""
        return 0 if self.include_prompt or not prompt else self._prompt_length(prompt)

    def _prompt_length(self, prompt: str) -> int:
        """The tokens a prompt takes at the start of a text (its leading special tokens included, a
        trailing one not), as sentence-transformers counts them to leave them out of pooling."""
        if prompt not in self._prompt_lengths:
            ids = self._token_ids([prompt])[0]
            special = set(self._loaded.tokenizer.all_special_ids)
            self._prompt_lengths[prompt] = len(ids) - (1 if ids and ids[-1] in special else 0)
        return self._prompt_lengths[prompt]

    @torch.inference_mode()
    def _dense(self, pooled: np.ndarray) -> np.ndarray:
        """The checkpoint's Dense modules applied to pooled vectors (after any exit head)."""
        mapped: torch.Tensor = self._loaded.dense(torch.from_numpy(pooled).to(self.device))  # Module.__call__ is typed Any
        return mapped.float().cpu().numpy()

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.compute_precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def _calibrate(self, loaded: LoadedModel) -> None:
        """Run `loaded`'s transformer over the calibration text, as `_forward` batches it."""
        token_ids = self._token_ids(calibration_texts())
        for batch in self._like_length_batches(token_ids):
            input_ids, attention_mask = self._pad([token_ids[index] for index in batch])
            loaded.model(input_ids=input_ids, attention_mask=attention_mask)

    def _pad(self, token_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and their attention mask, by the tokenizer's own `pad` (right: last-token
        pooling reads the last unmasked position), as transformers' collators call it: older versions
        advise a fast tokenizer's `__call__` instead, but these texts were tokenized once already."""
        from transformers.data.data_collator import pad_without_fast_tokenizer_warning  # 11 ms: on first use, not at import

        with self._loaded.tokenizer_lock:
            padded = pad_without_fast_tokenizer_warning(
                self._loaded.tokenizer, {"input_ids": token_ids}, padding=True, padding_side="right", return_tensors="np"
            )  # numpy, then torch: torch.tensor of nested lists takes 4x as long
        return torch.from_numpy(padded["input_ids"]).to(self.device), torch.from_numpy(padded["attention_mask"]).to(self.device)

    @torch.inference_mode()
    def _forward(self, token_ids: list[list[int]], num_layers: list[int], skipped: int = 0, side: str = "document") -> dict[int, np.ndarray]:
        """Pooled vectors at each of `num_layers` (ascending); the first `skipped` tokens (a prompt) are
        left out of pooling. One depth runs only its layers (queries shallower than the loaded model
        included); several run every loaded layer and read each off."""
        input_ids, attention_mask = self._pad(token_ids)
        hidden_states = self._hidden_states(input_ids, attention_mask, num_layers)
        pooling_mask = _pooling_mask(attention_mask, skipped)
        pooled = {}
        for kept in num_layers:
            vectors = pool(hidden_states[kept].float(), pooling_mask, self.pooling)
            vectors = self._loaded.exit_heads.apply(kept, vectors, side)  # none at full depth
            pooled[kept] = vectors.cpu().numpy()
        return pooled

    def tokenize(self, texts: Sequence[str], prompt: str = "") -> list[list[int]]:
        """The token ids of each `prompt + text` as a pass feeds them to the model (special tokens added,
        truncated to max_length)."""
        return self._token_ids([prompt + text for text in texts])

    def pooled_through(
        self, model: torch.nn.Module, texts: Sequence[str], prompt: str = "", *, before_batch: Callable[[list[list[int]]], None] | None = None
    ) -> torch.Tensor:
        """Pooled states of `texts` (`prompt` before each) from `model`, a view of this encoder's
        transformer (`loaded_model.cut`, or one with a layer being trained), with autograd on: what
        `mm2d adapt` trains an exit layer through. Run in batches of like length as `pooled_layerwise`
        runs them (a random batch of short texts padded to its longest is mostly padding), rows in the
        order of `texts`; `before_batch` is told each batch's token ids before it runs."""
        token_ids = self.tokenize(texts, prompt)
        skipped = self._skipped(prompt)
        batches = self._like_length_batches(token_ids)
        pooled = []
        for batch in batches:
            batch_ids = [token_ids[index] for index in batch]
            if before_batch is not None:
                before_batch(batch_ids)
            input_ids, attention_mask = self._pad(batch_ids)
            hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            pooled.append(pool(hidden.float(), _pooling_mask(attention_mask, skipped), self.pooling))
        if not pooled:
            return torch.empty(0, self._loaded.hidden_size, device=self.device)
        order = torch.tensor([index for batch in batches for index in batch], device=self.device)
        return torch.cat(pooled)[torch.argsort(order)]

    def _hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_layers: list[int]) -> dict[int, torch.Tensor]:
        """{kept: hidden state after that many layers (the architecture's final norm applied)} from one
        pass of the backend. With torch, one depth runs only its layers (a view sharing the weights)."""
        if self._onnx is not None:
            last, states = self._loaded.num_layers, self._onnx(input_ids, attention_mask, num_layers)
        else:
            single = len(num_layers) == 1
            last = num_layers[0] if single else self._loaded.num_layers
            exit_layers = self._loaded.exit_heads.layers
            with self._autocast():
                output = self._runner.cut(last)(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=not single)
                # A shallower depth with an exit layer runs it instead of its last base layer: a pass of its own.
                own = {
                    kept: self._runner.cut(kept)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                    for kept in num_layers if kept != last and kept in exit_layers
                }
            states = {kept: output.last_hidden_state if kept == last else own.get(kept, output.hidden_states[kept]) for kept in num_layers}
        final_norm = self._loaded.final_norm
        return {kept: hidden if kept == last or final_norm is None else final_norm(hidden) for kept, hidden in states.items()}

    def __repr__(self) -> str:
        queries = f", query_num_layers={self.query_num_layers}" if self.query_num_layers != self.num_layers else ""
        return (
            f"Matryoshka2DEncoder({self.model_name!r}, num_layers={self.num_layers}/{self.max_layers}{queries}, "
            f"dimensions={self.dimensions}/{self.max_dimensions}, pooling={self.pooling!r})"
        )


def _pooling_mask(attention_mask: torch.Tensor, skipped: int) -> torch.Tensor:
    """The tokens pooled: all but the first `skipped` (a prompt). A text that merged with the prompt's
    last word into fewer tokens would pool nothing (a zero vector): it is pooled with its prompt instead."""
    if not skipped:
        return attention_mask
    pooling_mask = attention_mask.clone()
    pooling_mask[:, :skipped] = 0
    empty = pooling_mask.sum(dim=1) == 0
    pooling_mask[empty] = attention_mask[empty]
    return pooling_mask


@dataclass(frozen=True)
class EncoderRecipe:
    """What rebuilds an encoder in another process: a model reference that resolves there (hub id,
    `package:<module>` or absolute folder), every option (trust_remote_code and allow_pickle too: a
    recipe comes from the user's own process, unlike a stored configuration) and the embedding space
    (`SPACE_KEYS` values) the rebuilt encoder must give."""

    model: str
    options: EncoderOptions
    space: tuple[tuple[str, Any], ...]

    @property
    def space_id(self) -> str:
        return space_id_of(dict(self.space))

    def build(self) -> Matryoshka2DEncoder:
        """The encoder, built once in this process and kept (among the last `KEPT_ENCODERS`), so that a
        worker that receives a pickled adapter with each task loads the model once; a ValueError where
        this process's model gives another space (other weights at the same path, say)."""
        with _KEPT_LOCK:
            return _kept_encoder(self)


KEPT_ENCODERS = 4
"""Encoders a process keeps built from recipes, the least recently used let go first: a worker that
receives adapters of many models or cuts holds at most this many (each frees with its last holder)."""
_KEPT_LOCK = threading.Lock()  # two threads that receive one recipe build it once


@functools.lru_cache(maxsize=KEPT_ENCODERS)
def _kept_encoder(recipe: EncoderRecipe) -> Matryoshka2DEncoder:
    encoder = Matryoshka2DEncoder(recipe.model, recipe.options)
    differences = space_differences(dict(recipe.space), encoder.fingerprint)
    if differences:
        raise ValueError(
            f"model {recipe.model!r} gives another embedding space in this process than where it was pickled "
            f"(differs in {', '.join(differences)}): check that both load the same weights"
        )
    return encoder


class EncoderHandle:
    """An encoder, or the recipe of one built on first use. It pickles as the recipe (never the model
    or its locks), so that an adapter holding it can be sent to worker processes: multiprocessing,
    Ray tasks, Spark UDFs, LlamaIndex's `IngestionPipeline(num_workers=...)`."""

    def __init__(self, encoder: Any = None, *, recipe: Any = None) -> None:
        """`encoder`: a `Matryoshka2DEncoder` or a `remote.RemoteEncoder`; `recipe`: what rebuilds one (their `recipe`)."""
        if (encoder is None) == (recipe is None):
            raise ValueError("give an encoder or a recipe")
        self._encoder: Matryoshka2DEncoder | None = encoder
        self._recipe: EncoderRecipe | None = recipe

    def get(self) -> Matryoshka2DEncoder:
        if self._encoder is None:
            assert self._recipe is not None
            self._encoder = self._recipe.build()
        return self._encoder

    @property
    def recipe(self) -> EncoderRecipe:
        return self._recipe if self._recipe is not None else self.get().recipe

    @property
    def options(self) -> EncoderOptions:
        return self.recipe.options if self._encoder is None else self._encoder.options

    @property
    def space_id(self) -> str:
        return self.recipe.space_id if self._encoder is None else self._encoder.space_id

    def __getstate__(self) -> dict[str, Any]:
        return {"recipe": self.recipe}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(recipe=state["recipe"])  # type: ignore[misc]  # unpickling: the same checks as a new handle

    def __deepcopy__(self, memo: dict[int, Any]) -> EncoderHandle:
        return self  # an encoder never changes: copies of an adapter share it
