"""Chroma: an embedding function, clients, and collections that refuse a second embedding space.

A collection records the fingerprint of the encoder that filled it (weights, num_layers,
dimensions, pooling, prompts ...). Opening it with another configuration fails before anything
is written: same dimensions at another depth give vectors of the same shape but another space.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mm2d_integrations.encoder import Matryoshka2DEncoder, require

require("chromadb", "chroma")

import chromadb  # noqa: E402
from chromadb.api import ClientAPI  # noqa: E402
from chromadb.api.models.Collection import Collection  # noqa: E402
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space  # noqa: E402
from chromadb.utils.embedding_functions import register_embedding_function  # noqa: E402

DEFAULT_PERSIST_DIR = Path(".mm2d") / "chroma"
DEFAULT_COLLECTION = "mm2d"
FINGERPRINT_KEY = "mm2d_fingerprint"
# What changes the vectors; the model's name is shown but the weights identify it.
SPACE_KEYS = ("weights", "num_layers", "dimensions", "pooling", "query_prompt", "document_prompt", "normalize", "max_length")
# get_config() keys -> Matryoshka2DEncoder arguments
_CONFIG_ARGUMENTS = {
    "num_layers": "num_layers", "dimensions": "dimensions", "pooling": "pooling", "normalize": "normalize",
    "query_prompt": "query_prompt", "document_prompt": "document_prompt", "max_length": "max_length",
    "batch_size": "batch_size", "device": "device", "dtype": "dtype", "revision": "revision",
}


class EmbeddingSpaceMismatch(ValueError):
    """A collection's vectors were made by another embedding configuration."""


def space_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [key for key in SPACE_KEYS if stored.get(key) != current.get(key)]


def describe(fingerprint: dict[str, Any]) -> str:
    return ", ".join(f"{key}={fingerprint.get(key)!r}" for key in ("model", *SPACE_KEYS))


@register_embedding_function
class Matryoshka2DEmbeddingFunction(EmbeddingFunction[Documents]):
    """chromadb's embedding function protocol over a `Matryoshka2DEncoder`."""

    def __init__(self, model_name: str | None = None, *, encoder: Matryoshka2DEncoder | None = None, **options: Any) -> None:
        if encoder is None:
            from mm2d_integrations.loading import default_model

            encoder = Matryoshka2DEncoder(model_name or default_model(), **options)
        elif model_name is not None or options:
            raise ValueError("pass either an encoder or the options to build one, not both")
        self.encoder = encoder

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.encoder.encode_documents(list(input)))

    def embed_query(self, input: Documents) -> Embeddings:
        return list(self.encoder.encode_queries(list(input)))

    @staticmethod
    def name() -> str:
        return "mm2d"

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "ip", "l2"] if self.encoder.normalize else ["cosine"]

    def get_config(self) -> dict[str, Any]:
        encoder = self.encoder
        return {
            **encoder.fingerprint,
            "batch_size": encoder.batch_size,
            "dtype": str(encoder.dtype).removeprefix("torch."),
            "revision": encoder.source.revision,
        }

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> Matryoshka2DEmbeddingFunction:
        Matryoshka2DEmbeddingFunction.validate_config(config)
        options = {argument: config[key] for key, argument in _CONFIG_ARGUMENTS.items() if config.get(key) is not None}
        rebuilt = Matryoshka2DEmbeddingFunction(config["model"], **options)
        differences = space_differences(config, rebuilt.encoder.fingerprint)
        if differences:
            raise EmbeddingSpaceMismatch(
                f"the model at {config['model']!r} no longer gives the stored embedding space "
                f"(differs in {', '.join(differences)}): stored {describe(config)}; now {describe(rebuilt.encoder.fingerprint)}"
            )
        return rebuilt

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        missing = [key for key in ("model", "num_layers", "dimensions") if key not in config]
        if missing:
            raise ValueError(f"mm2d embedding function config lacks {', '.join(missing)}")

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        """Only changes that leave the vectors as they are (batch size, device, dtype) are allowed."""
        differences = space_differences(old_config, new_config)
        if differences:
            raise EmbeddingSpaceMismatch(
                f"cannot change {', '.join(differences)} of a collection's embedding function: the stored "
                f"vectors would no longer match ({describe(old_config)} -> {describe(new_config)})"
            )


def chroma_client(persist_dir: str | Path | None = None, host: str | None = None, port: int | None = None) -> ClientAPI:
    """An embedded client persisting in `persist_dir` (default .mm2d/chroma), or a server's by host and port."""
    if host is not None or port is not None:
        if persist_dir is not None:
            raise ValueError("give either persist_dir (embedded Chroma) or host/port (a Chroma server), not both")
        return chromadb.HttpClient(host=host or "localhost", port=port or 8000)
    path = Path(persist_dir or DEFAULT_PERSIST_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path))  # default settings: the same folder may be opened by plain chromadb


def as_encoder(embedder: Any) -> Matryoshka2DEncoder:
    """The encoder behind an encoder, an embedding function, or a LangChain / LlamaIndex adapter."""
    encoder = embedder if isinstance(embedder, Matryoshka2DEncoder) else getattr(embedder, "encoder", None)
    if not isinstance(encoder, Matryoshka2DEncoder):
        raise TypeError(f"expected a Matryoshka2DEncoder or one of this package's adapters, got {type(embedder).__name__}")
    return encoder


def open_collection(embedder: Any, name: str = DEFAULT_COLLECTION, *, client: ClientAPI | None = None) -> Collection:
    """The collection `name`, created for `embedder`'s space or checked against the one it records."""
    encoder = as_encoder(embedder)
    function = embedder if isinstance(embedder, Matryoshka2DEmbeddingFunction) else Matryoshka2DEmbeddingFunction(encoder=encoder)
    client = client or chroma_client()
    current = encoder.fingerprint
    collection = client.get_or_create_collection(
        name,
        embedding_function=function,
        metadata={FINGERPRINT_KEY: json.dumps(current, sort_keys=True)},
        configuration={"hnsw": {"space": "cosine"}},
    )
    stored_json = (collection.metadata or {}).get(FINGERPRINT_KEY)
    if stored_json is None:
        if collection.count():
            raise EmbeddingSpaceMismatch(
                f"collection {name!r} holds {collection.count()} vectors of an unknown embedding configuration; "
                f"use another collection for {describe(current)}"
            )
        collection.modify(metadata={**(collection.metadata or {}), FINGERPRINT_KEY: json.dumps(current, sort_keys=True)})
        return collection
    stored = json.loads(stored_json)
    differences = space_differences(stored, current)
    if differences:
        raise EmbeddingSpaceMismatch(
            f"collection {name!r} holds vectors of another embedding configuration (differs in "
            f"{', '.join(differences)}): stored {describe(stored)}; given {describe(current)}. "
            "Use the stored configuration, or index into another collection."
        )
    return collection


def open_store(
    embedder: Any,
    collection_name: str | None = None,
    *,
    persist_dir: str | Path | None = None,
    host: str | None = None,
    port: int | None = None,
    client: ClientAPI | None = None,
) -> tuple[ClientAPI, Collection]:
    """`open_collection` on `client`, or on the client that `persist_dir` or `host`/`port` name."""
    client = client or chroma_client(persist_dir, host, port)
    return client, open_collection(embedder, collection_name or DEFAULT_COLLECTION, client=client)


def stored_embedding_function(name: str = DEFAULT_COLLECTION, *, client: ClientAPI) -> Matryoshka2DEmbeddingFunction:
    """The embedding function a collection was built with, rebuilt from what it recorded."""
    stored = client.get_collection(name, embedding_function=None).metadata or {}
    if FINGERPRINT_KEY not in stored:
        raise EmbeddingSpaceMismatch(f"collection {name!r} was not indexed by mm2d: it records no embedding configuration")
    return Matryoshka2DEmbeddingFunction.build_from_config(json.loads(stored[FINGERPRINT_KEY]))
