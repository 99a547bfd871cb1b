"""An encoder whose vectors come from an HTTP endpoint (mixedbread's API, or `mm2d serve`) through
the official `mixedbread` SDK: what the adapters and Chroma's function hold instead of a local
`Matryoshka2DEncoder` when given a `base_url`.

The endpoint cuts dimensions (the `dimensions` field) and, on `mm2d serve`, layers (`num_layers`).
`mm2d serve` also says, at `/v1/models`, which weights, prompts and pooling it uses, so a remote
encoder over it names the same embedding space as the local encoder (its vectors are the same);
for another endpoint the space is named by the endpoint's model. The API key is never pickled nor
stored: a rebuilt encoder reads it from `MXBAI_API_KEY`, as the SDK does.
"""

from __future__ import annotations

import asyncio
import copy
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mm2d_integrations.core.encoder import EncoderRecipe, space_id_of, space_items
from mm2d_integrations.core.options import EncoderOptions
from mm2d_integrations.core.validation import check_int_in_range, check_texts, install_hint

__all__ = ["API_KEY_VARIABLE", "REMOTE_OPTIONS", "RemoteEmbeddingError", "RemoteEncoder", "RemoteRecipe"]

API_KEY_VARIABLE = "MXBAI_API_KEY"  # where the mixedbread SDK reads its key
REMOTE_OPTIONS = ("num_layers", "dimensions", "normalize", "query_prompt", "document_prompt", "batch_size", "show_progress")
"""The options an endpoint honours (batch_size: texts per request); setting any other is refused."""


class RemoteEmbeddingError(RuntimeError):
    """The endpoint refused or did not answer, after the SDK's retries with backoff on 408/409/429/5xx."""


class RemoteEncoder:
    """`encode_documents`, `encode_queries`, `fingerprint`, `space_id` and `options`, as a local encoder
    has them, over `base_url`'s `model`."""

    def __init__(
        self, base_url: str, model: str, options: EncoderOptions | None = None, /, *, api_key: str | None = None,
        max_retries: int = 4, timeout: float = 60.0, **overrides: Any,
    ) -> None:
        given = EncoderOptions.of(options, **overrides)
        defaults = EncoderOptions()
        unused = [name for name in EncoderOptions.names() if name not in REMOTE_OPTIONS and getattr(given, name) != getattr(defaults, name)]
        if unused:
            raise ValueError(f"{', '.join(unused)} cannot be set for a remote endpoint (base_url); it honours {', '.join(REMOTE_OPTIONS)}")
        check_int_in_range("batch_size", given.batch_size, 1, 1 << 20)
        for name in ("num_layers", "dimensions"):
            if getattr(given, name) is not None:
                check_int_in_range(name, getattr(given, name), 1, 1 << 20)
        self.base_url, self.model_name, self._given = str(base_url).rstrip("/"), model, given
        self._api_key, self._max_retries, self._timeout = api_key, max_retries, timeout
        self._client: Any = None
        self._served: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The SDK's client, made on first use; its key: `api_key`, else `MXBAI_API_KEY`."""
        with self._lock:
            if self._client is None:
                try:
                    from mixedbread import Mixedbread
                except ImportError as error:
                    raise ImportError(install_hint("mixedbread", "remote")) from error
                key = self._api_key or os.environ.get(API_KEY_VARIABLE)
                if not key:
                    raise ValueError(f"a remote endpoint needs an API key: give api_key, or set {API_KEY_VARIABLE}")
                self._client = Mixedbread(base_url=self.base_url, api_key=key, max_retries=self._max_retries, timeout=self._timeout)
            return self._client

    @property
    def served(self) -> dict[str, Any]:
        """What the endpoint says of its model's embedding space (`mm2d serve`'s `/v1/models`); empty where it says nothing."""
        if self._served is None:
            import mixedbread

            try:
                listing = self._call(self.client.get, "/v1/models", cast_to=object)
            except RemoteEmbeddingError as error:
                cause = error.__cause__
                if not isinstance(cause, mixedbread.APIStatusError) or cause.status_code >= 500:
                    raise
                listing = {}  # no such list (not `mm2d serve`): the space is named by the endpoint's model
            entries = [entry for entry in (listing or {}).get("data", []) if isinstance(entry, dict) and entry.get("id") == self.model_name]
            self._served = dict(entries[0].get("mm2d") or {}) if entries else {}
        return self._served

    @property
    def num_layers(self) -> int | None:
        """As given, else as the endpoint serves (None where it does not say)."""
        return self._given.num_layers if self._given.num_layers is not None else self.served.get("num_layers")

    @property
    def dimensions(self) -> int:
        """As given, else the endpoint's: as it says, or as long as the vector it gives."""
        if self._given.dimensions is not None:
            return self._given.dimensions
        if "dimensions" in self.served:
            return int(self.served["dimensions"])
        return int(self.encode_documents(["dimensions"]).shape[1])

    @property
    def normalize(self) -> bool:
        return self._given.normalize

    @property
    def query_prompt(self) -> str:
        return self._given.query_prompt if self._given.query_prompt is not None else self.served.get("query_prompt", "")

    @property
    def document_prompt(self) -> str:
        return self._given.document_prompt if self._given.document_prompt is not None else self.served.get("document_prompt", "")

    @property
    def options(self) -> EncoderOptions:
        """The options as given (what the endpoint resolves is in `fingerprint`): asking nothing of the endpoint."""
        return self._given

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The endpoint's model and what it gives (depth, width, prompts): a collection guard refuses
        another endpoint model, depth or width as it refuses another local one."""
        served = self.served
        return {
            "model": self.model_name,
            "weights": served.get("weights", f"remote:{self.model_name}"),
            "num_layers": self.num_layers,
            "dimensions": self.dimensions,
            "pooling": served.get("pooling"),
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
            "normalize": self.normalize,
            "max_length": served.get("max_length"),
            "include_prompt": served.get("include_prompt", True),
        }

    @property
    def space_id(self) -> str:
        return space_id_of(self.fingerprint)

    @property
    def recipe(self) -> RemoteRecipe:
        return RemoteRecipe(self.model_name, self._given, space_items(self.fingerprint), self.base_url)

    def with_dimensions(self, dimensions: int) -> RemoteEncoder:
        """This encoder asking the endpoint for only the first `dimensions` components."""
        narrowed = copy.copy(self)
        narrowed._given = EncoderOptions.of(self._given, dimensions=check_int_in_range("dimensions", dimensions, 1, self.dimensions))
        narrowed._lock = threading.Lock()
        return narrowed

    def encode_documents(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        """Document vectors, shape (n, dimensions), float32, in input order."""
        return self.encode(texts, prompt=self.document_prompt)

    def encode_queries(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        """Query vectors (the query prompt put before each), shape (n, dimensions), float32."""
        return self.encode(texts, prompt=self.query_prompt)

    async def aencode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.to_thread(self.encode_documents, texts)

    async def aencode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.to_thread(self.encode_queries, texts)

    def encode(self, texts: Sequence[str], *, prompt: str = "") -> np.ndarray:
        """Vectors of `texts` with `prompt` put before each, `batch_size` texts a request."""
        checked = check_texts(texts)
        extra = {"num_layers": self._given.num_layers} if self._given.num_layers is not None else None
        dimensions = {"dimensions": self._given.dimensions} if self._given.dimensions is not None else {}
        parts = []
        for start in range(0, len(checked), self._given.batch_size):
            response = self._call(
                self.client.embed, model=self.model_name, input=checked[start : start + self._given.batch_size], prompt=prompt,
                normalized=self.normalize, encoding_format="float", extra_body=extra, **dimensions,
            )
            parts += [np.asarray(item.embedding, np.float32) for item in sorted(response.data, key=lambda item: item.index)]
        if not parts:
            return np.empty((0, self.dimensions), np.float32)
        return np.stack(parts)

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        import mixedbread

        try:
            return method(*args, **kwargs)
        except mixedbread.APIStatusError as error:
            raise RemoteEmbeddingError(
                f"{self.base_url} answered {error.status_code} for model {self.model_name!r}: {error.message}"
            ) from error
        except mixedbread.APIConnectionError as error:
            raise RemoteEmbeddingError(f"no answer from {self.base_url} after {self._max_retries} retries ({error})") from error

    def __getstate__(self) -> dict[str, Any]:
        """No key (read again from `MXBAI_API_KEY`), no client, no lock."""
        return {**self.__dict__, "_api_key": None, "_client": None, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RemoteEncoder({self.base_url!r}, {self.model_name!r}, num_layers={self._given.num_layers}, dimensions={self._given.dimensions})"


@dataclass(frozen=True)
class RemoteRecipe(EncoderRecipe):
    """An `EncoderRecipe` whose model is `base_url`'s: it rebuilds a remote encoder (its key from `MXBAI_API_KEY`)."""

    base_url: str = ""

    def build(self) -> RemoteEncoder:  # type: ignore[override]  # the endpoint's encoder stands in for a local one
        return RemoteEncoder(self.base_url, self.model, self.options)
