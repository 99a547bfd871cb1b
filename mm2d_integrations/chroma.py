"""Chroma: an embedding function, clients, and collections that refuse a second embedding space.

A collection records the configuration of the encoder that filled it (weights, num_layers,
dimensions, pooling, prompts ...). Opening it with another configuration fails before anything
is written: same dimensions at another depth give vectors of the same shape but another space.
The depth of queries (`query_num_layers`) is not part of that space: the encoder only accepts a
query depth whose vectors land in the documents' space, so any may search the collection.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np

from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.core.encoder import (
    SPACE_KEYS,
    EncoderHandle,
    EncoderRecipe,
    Matryoshka2DEncoder,
    space_differences,
    space_items,
    truncate_dimensions,
)
from mm2d_integrations.core.options import EncoderOptions
from mm2d_integrations.core.validation import install_hint
from mm2d_integrations.retrieval.funnel import check_search, check_shortlist_dims, rerank, short_collection_name
from mm2d_integrations.retrieval.store_rules import (
    DEFAULT_COLLECTION,
    DEFAULT_PERSIST_DIR,
    MissingIndex,
    StoreUnavailable,
    check_collection_name,
)
from mm2d_integrations.retrieval.vector_rows import VectorRows
from mm2d_integrations.serving.remote import REMOTE_OPTIONS, RemoteEncoder, RemoteRecipe

try:
    import chromadb
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Documents, Embeddable, EmbeddingFunction, Embeddings, Space
    from chromadb.utils.embedding_functions import register_embedding_function
except ImportError as error:
    raise ImportError(install_hint("chromadb", "chroma")) from error

__all__ = [
    "DEFAULT_COLLECTION", "DEFAULT_PERSIST_DIR", "EmbeddingSpaceMismatch", "FunnelIndex", "Hit", "MissingIndex", "StoreUnavailable",
    "Matryoshka2DEmbeddingFunction", "as_encoder", "check_collection_name", "check_stored_vectors", "chroma_client", "encoder_config",
    "has_collection", "open_collection", "open_store", "rows_folder", "stored_embedding_function", "stored_encoder", "stored_ids",
    "stored_vector_cosines",
]

FINGERPRINT_KEY = "mm2d_fingerprint"
ADOPT_SAMPLE = 32  # stored documents embedded again to adopt a collection
ADOPT_MIN_COSINE = 0.999  # the least cosine of a sample to its stored vectors for one embedding space (float32 runs of one model: > 0.9999)
ROWS_FOLDER = "mm2d-rows"  # beside chroma.sqlite3: one folder of vector rows per funnel's full collection
_SQLITE_HEADER = b"SQLite format 3\x00"
_DAMAGED = "it may be damaged: move it aside and index again"


class EmbeddingSpaceMismatch(ValueError):
    """A collection's vectors were made by another embedding configuration."""


def describe(config: dict[str, Any]) -> str:
    return ", ".join(f"{key}={config.get(key)!r}" for key in ("model", *SPACE_KEYS))


def encoder_config(encoder: Matryoshka2DEncoder | RemoteEncoder) -> dict[str, Any]:
    """What rebuilds `encoder` elsewhere: its fingerprint, every restorable option, and a model
    reference that resolves in another environment (hub id, `package:<module>`, or the folder); for a
    remote encoder, the endpoint's `base_url` and model (never its API key)."""
    if isinstance(encoder, RemoteEncoder):
        # the fingerprint last: it holds what the endpoint resolved where the options say None
        return {**encoder.options.to_config(), **encoder.fingerprint, "base_url": encoder.base_url}
    return {**encoder.fingerprint, **encoder.options.to_config(), "model": encoder.source.reference}


@register_embedding_function
class Matryoshka2DEmbeddingFunction(EmbeddingFunction[Documents]):
    """chromadb's embedding function protocol over a `Matryoshka2DEncoder`.

    Give an `encoder` to wrap it, or a model and `EncoderOptions` (or their fields by name) to build one;
    with `base_url`, the model is an endpoint's (mixedbread's API or `mm2d serve`, see `remote`), its
    key `api_key` or `MXBAI_API_KEY`, which is never stored in the collection. It pickles as its configuration, never the model: a process that unpickles it loads the model on
    first use, once (see `EncoderHandle`).
    """

    _handle: EncoderHandle | None  # None until a stored configuration is first built
    _stored: dict[str, Any] | None
    _lock: threading.Lock

    def __init__(
        self,
        model_name: str | Path | None = None,
        options: EncoderOptions | None = None,
        *,
        encoder: Matryoshka2DEncoder | RemoteEncoder | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        **overrides: Any,
    ) -> None:
        if encoder is not None and (model_name is not None or options is not None or overrides or base_url is not None):
            raise ValueError("pass either an encoder or the options to build one, not both")
        if encoder is None and base_url is not None:
            if model_name is None:
                raise ValueError("model_name must name the endpoint's model when base_url is given")
            encoder = RemoteEncoder(base_url, str(model_name), options, api_key=api_key, **overrides)
        self._start(EncoderHandle(encoder or Matryoshka2DEncoder(model_name or default_model(), options, **overrides)), None)

    def _start(self, handle: EncoderHandle | None, stored: dict[str, Any] | None) -> None:
        """The state every way of making one sets: an encoder's handle, or a stored configuration to build it from."""
        self._handle, self._stored, self._lock = handle, stored, threading.Lock()

    @classmethod
    def _deferred(cls, config: dict[str, Any]) -> Matryoshka2DEmbeddingFunction:
        """A function that builds its encoder from a stored `config` when first used, and checks that
        the model still gives the stored space. chromadb rebuilds a collection's function every time it
        reads the collection, so building must cost nothing until vectors are asked for."""
        function = cls.__new__(cls)
        function._start(None, config)
        return function

    @classmethod
    def of(cls, encoder: Matryoshka2DEncoder | RemoteEncoder) -> Matryoshka2DEmbeddingFunction:
        """The function over `encoder` as it is (`Matryoshka2DEmbeddingFunction(encoder=encoder)`, with nothing to build)."""
        function = cls.__new__(cls)
        function._start(EncoderHandle(encoder), None)
        return function

    @property
    def encoder(self) -> Matryoshka2DEncoder | RemoteEncoder:
        with self._lock:
            if self._handle is None:
                assert self._stored is not None
                self._handle = EncoderHandle(_rebuild(self._stored))
            return self._handle.get()

    def __getstate__(self) -> dict[str, Any]:
        return {"handle": self._handle or EncoderHandle(recipe=_stored_recipe(self._stored or {}))}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._start(state["handle"], None)

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.encoder.encode_documents(list(input)))

    def embed_query(self, input: Documents) -> Embeddings:
        return list(self.encoder.encode_queries(list(input)))

    @staticmethod
    def name() -> str:
        return "mm2d"

    def is_legacy(self) -> bool:
        return False  # chromadb's default answers by building a second function from get_config()

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        normalize = self._handle.options.normalize if self._handle is not None else (self._stored or {}).get("normalize", True)
        return ["cosine", "ip", "l2"] if normalize else ["cosine"]

    def get_config(self) -> dict[str, Any]:
        if self._handle is None:
            assert self._stored is not None
            return dict(self._stored)
        return encoder_config(self._handle.get())

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> Matryoshka2DEmbeddingFunction:
        Matryoshka2DEmbeddingFunction.validate_config(config)
        return Matryoshka2DEmbeddingFunction._deferred(config)

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        missing = [key for key in ("model", "num_layers", "dimensions") if key not in config]
        if missing:
            raise ValueError(f"mm2d embedding function config lacks {', '.join(missing)}")

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        """Only changes that leave the stored vectors' space as it is (batch size, device, dtype, the query
        depth) are allowed."""
        differences = space_differences(old_config, new_config)
        if differences:
            raise EmbeddingSpaceMismatch(
                f"cannot change {', '.join(differences)} of a collection's embedding function: the stored "
                f"vectors would no longer match ({describe(old_config)} -> {describe(new_config)})"
            )


def _rebuild(config: dict[str, Any]) -> Matryoshka2DEncoder | RemoteEncoder:
    """The encoder a stored configuration names, checked to give the stored embedding space.
    trust_remote_code and allow_pickle are never restored: a model that needs them fails to load,
    with a message naming the argument to pass. A remote one reads its key from `MXBAI_API_KEY`."""
    encoder: Matryoshka2DEncoder | RemoteEncoder
    if config.get("base_url"):
        encoder = RemoteEncoder(config["base_url"], config["model"], _remote_options(config))
    else:
        encoder = Matryoshka2DEncoder(config["model"], EncoderOptions.from_config(config))
    differences = space_differences(config, encoder.fingerprint)
    if differences:
        raise EmbeddingSpaceMismatch(
            f"the model at {config['model']!r} no longer gives the stored embedding space "
            f"(differs in {', '.join(differences)}): stored {describe(config)}; now {describe(encoder.fingerprint)}"
        )
    return encoder


def _remote_options(config: dict[str, Any]) -> EncoderOptions:
    """The options a remote encoder was given, from a stored configuration (which also holds what the endpoint resolved)."""
    return EncoderOptions.of(**{name: value for name, value in EncoderOptions.from_config(config).as_dict().items() if name in REMOTE_OPTIONS})


def _stored_recipe(config: dict[str, Any]) -> EncoderRecipe | RemoteRecipe:
    """A stored configuration as a recipe: what a function not yet built pickles as."""
    space = space_items(config)
    if config.get("base_url"):
        return RemoteRecipe(config["model"], _remote_options(config), space, config["base_url"])
    return EncoderRecipe(config["model"], EncoderOptions.from_config(config), space)


def chroma_client(
    persist_dir: str | Path | None = None, host: str | None = None, port: int | None = None, *, create: bool = True
) -> ClientAPI:
    """An embedded client persisting in `persist_dir` (default .mm2d/chroma), or a server's by host and port.

    With `create=False` a folder that does not exist is a `MissingIndex` and is not made. A folder
    Chroma cannot read, or a server that does not answer, is a `StoreUnavailable`.
    """
    if host is not None or port is not None:
        if persist_dir is not None:
            raise ValueError("give either persist_dir (embedded Chroma) or host/port (a Chroma server), not both")
        try:
            return chromadb.HttpClient(host=host or "localhost", port=port or 8000)
        except ValueError as error:  # chromadb's word for a refused connection
            raise StoreUnavailable(f"no Chroma server answers at {host or 'localhost'}:{port or 8000} ({error})") from error
    path = Path(persist_dir or DEFAULT_PERSIST_DIR)
    if not create and not path.is_dir():
        raise MissingIndex(f"no index at {path}")
    database = path / "chroma.sqlite3"
    if not _readable_database(database):  # checked first: chromadb keeps a failed folder's state for the process
        raise StoreUnavailable(f"Chroma folder {path} cannot be opened ({database.name} is not an SQLite database); {_DAMAGED}")
    path.mkdir(parents=True, exist_ok=True)
    try:
        # absolute: chromadb shares one client per path string in a process, so "./index" from another
        # working folder would otherwise reach the first folder's store
        return chromadb.PersistentClient(path=str(path.absolute()))  # default settings: plain chromadb may open the same folder
    except (chromadb.errors.ChromaError, ValueError) as error:
        raise StoreUnavailable(f"Chroma folder {path} cannot be opened ({error}); {_DAMAGED}") from error


def _readable_database(database: Path) -> bool:
    """False only for a file that is there and is not SQLite (an empty or absent one is a new store)."""
    if not database.is_file() or not database.stat().st_size:
        return True
    with database.open("rb") as handle:
        return handle.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER


def has_collection(client: ClientAPI, name: str) -> bool:
    return name in {collection.name for collection in client.list_collections()}


def as_encoder(embedder: Any) -> Matryoshka2DEncoder | RemoteEncoder:
    """The encoder behind an encoder, an embedding function, or a LangChain / LlamaIndex adapter."""
    encoder = embedder if isinstance(embedder, (Matryoshka2DEncoder, RemoteEncoder)) else getattr(embedder, "encoder", None)
    if not isinstance(encoder, (Matryoshka2DEncoder, RemoteEncoder)):
        raise TypeError(f"expected a Matryoshka2DEncoder or one of this package's adapters, got {type(embedder).__name__}")
    return encoder


def open_collection(
    embedder: Any,
    name: str = DEFAULT_COLLECTION,
    *,
    client: ClientAPI | None = None,
    create: bool = True,
    adopt: bool = False,
    embedded_text: Callable[[str, dict[str, Any]], str] | None = None,
) -> Collection:
    """The collection `name`, created for `embedder`'s space or checked against the one it records.
    With `create=False` a collection that does not exist is a `MissingIndex`.

    `adopt`: take over a collection that records no configuration but holds vectors (one built with
    plain Chroma, `langchain_chroma.Chroma` or LlamaIndex's `ChromaVectorStore`): a sample of its
    documents is embedded again and compared with their stored vectors (`check_stored_vectors`); the
    configuration is recorded when they agree, else it is an `EmbeddingSpaceMismatch` giving the cosine.
    `embedded_text`: the text that was embedded for a stored document and its metadata, where that is
    not the document itself (LlamaIndex embeds metadata with the text)."""
    check_collection_name(name)
    client = client or chroma_client()
    if not create and not has_collection(client, name):
        raise MissingIndex(f"collection {name!r} does not exist")
    encoder = as_encoder(embedder)
    function = embedder if isinstance(embedder, Matryoshka2DEmbeddingFunction) else Matryoshka2DEmbeddingFunction.of(encoder)
    current = function.get_config()
    collection = _with_function(client, name, function)
    stored_json = (collection.metadata or {}).get(FINGERPRINT_KEY)
    if stored_json is None:
        if collection.count() and not adopt:
            raise EmbeddingSpaceMismatch(
                f"collection {name!r} holds {collection.count()} vectors of an unknown embedding configuration; "
                f"use another collection for {describe(current)}, or, if they were made by this configuration "
                "elsewhere (plain Chroma, langchain_chroma), pass adopt=True (mm2d index --adopt) to check a sample and take it over"
            )
        if collection.count():
            check_stored_vectors(collection, encoder, embedded_text)
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


def _with_function(client: ClientAPI, name: str, function: Matryoshka2DEmbeddingFunction) -> Collection:
    """The collection `name` (created for `function`'s space when missing), embedding with `function`.

    A collection that plain chromadb made records its own function (chroma's default): chroma refuses a
    second one there and asks to embed separately. That collection is opened without a function and
    given `function` to embed with; what it records is left as it is (chroma refuses to change it)."""
    if has_collection(client, name):
        existing = client.get_collection(name, embedding_function=None)
        recorded = (existing.configuration_json or {}).get("embedding_function") or {}
        if recorded.get("name") not in (None, function.name()):
            existing._embedding_function = cast("EmbeddingFunction[Embeddable]", function)  # chroma has no public way to embed with another function
            return existing
    return client.get_or_create_collection(
        name,
        embedding_function=cast("EmbeddingFunction[Embeddable]", function),  # chromadb's type rejects a text-only function
        metadata={FINGERPRINT_KEY: json.dumps(function.get_config(), sort_keys=True)},
        configuration={"hnsw": {"space": "cosine"}},
    )


def check_stored_vectors(
    collection: Collection, encoder: Matryoshka2DEncoder | RemoteEncoder, embedded_text: Callable[[str, dict[str, Any]], str] | None = None
) -> float:
    """The least of `stored_vector_cosines`, or an `EmbeddingSpaceMismatch` naming it when it is under
    `ADOPT_MIN_COSINE` (another model, depth, width, pooling or prompt made the stored vectors)."""
    cosines = stored_vector_cosines(collection, encoder, embedded_text)
    least = float(cosines.min())
    if least < ADOPT_MIN_COSINE:
        reduced = [f"{name}={value!r}" for name, value in encoder.options.as_dict().items() if name in ("compute_precision", "dtype") and value not in (None, "float32")]
        approximate = f" ({', '.join(reduced)} moves vectors too: adopt with float32, then open it with {', '.join(reduced)})" if reduced else ""
        raise EmbeddingSpaceMismatch(
            f"collection {collection.name!r} was not embedded by {describe(encoder_config(encoder))}: {len(cosines)} of its "
            f"{collection.count()} documents embedded again give cosine {least:.4f} at least (mean {float(cosines.mean()):.4f}) to their "
            f"stored vectors, under {ADOPT_MIN_COSINE}{approximate}. Open it with the configuration that made it, or index into another collection."
        )
    return least


def stored_vector_cosines(
    collection: Collection, encoder: Matryoshka2DEncoder | RemoteEncoder, embedded_text: Callable[[str, dict[str, Any]], str] | None = None
) -> np.ndarray:
    """The cosine of each of up to `ADOPT_SAMPLE` stored documents, spread over the collection and embedded
    again by `encoder`, to its stored vector (`embedded_text`: see `open_collection`). Reads only."""
    count = collection.count()
    offsets = sorted({round(step * (count - 1) / max(1, ADOPT_SAMPLE - 1)) for step in range(min(ADOPT_SAMPLE, count))})
    texts, stored = [], []
    for offset in offsets:
        record = collection.get(limit=1, offset=offset, include=["documents", "embeddings", "metadatas"])
        documents, metadatas, embeddings = record["documents"], record["metadatas"], record["embeddings"]
        assert documents is not None and metadatas is not None and embeddings is not None, "included"
        if record["ids"] and documents[0] is not None:
            document, metadata = documents[0], dict(metadatas[0] or {})
            texts.append(embedded_text(document, metadata) if embedded_text else document)
            stored.append(np.asarray(embeddings[0], dtype=np.float32))
    if not texts:
        raise EmbeddingSpaceMismatch(f"collection {collection.name!r} stores no documents beside its vectors: there is nothing to embed again and compare")
    width = stored[0].shape[0]
    if width != encoder.dimensions:
        raise EmbeddingSpaceMismatch(
            f"collection {collection.name!r} holds {width}-dimensional vectors; {describe(encoder_config(encoder))} gives {encoder.dimensions}"
        )
    ours, theirs = encoder.encode_documents(texts), np.stack(stored)
    cosines: np.ndarray = np.sum(ours * theirs, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1) + 1e-12)
    return cosines


def open_store(
    embedder: Any,
    collection_name: str | None = None,
    *,
    persist_dir: str | Path | None = None,
    host: str | None = None,
    port: int | None = None,
    client: ClientAPI | None = None,
    adopt: bool = False,
    embedded_text: Callable[[str, dict[str, Any]], str] | None = None,
) -> tuple[ClientAPI, Collection]:
    """`open_collection` on `client`, or on the client that `persist_dir` or `host`/`port` name (`adopt`, `embedded_text`: as there)."""
    client = client or chroma_client(persist_dir, host, port)
    return client, open_collection(embedder, collection_name or DEFAULT_COLLECTION, client=client, adopt=adopt, embedded_text=embedded_text)


def stored_encoder(name: str = DEFAULT_COLLECTION, *, client: ClientAPI, query_num_layers: int | None = None) -> Matryoshka2DEncoder | RemoteEncoder:
    """The encoder a collection was built with, rebuilt from what it recorded and checked to give the
    recorded space (the one check a collection read this way needs); with queries at `query_num_layers`
    when given (the recorded query depth otherwise)."""
    stored = client.get_collection(name, embedding_function=None).metadata or {}
    if FINGERPRINT_KEY not in stored:
        raise EmbeddingSpaceMismatch(f"collection {name!r} was not indexed by mm2d: it records no embedding configuration")
    config = json.loads(stored[FINGERPRINT_KEY])
    Matryoshka2DEmbeddingFunction.validate_config(config)
    if query_num_layers is not None:
        config["query_num_layers"] = query_num_layers
    return _rebuild(config)  # built now: a model that no longer matches fails here


def stored_embedding_function(
    name: str = DEFAULT_COLLECTION, *, client: ClientAPI, query_num_layers: int | None = None
) -> Matryoshka2DEmbeddingFunction:
    """`stored_encoder` as chromadb's embedding function."""
    return Matryoshka2DEmbeddingFunction.of(stored_encoder(name, client=client, query_num_layers=query_num_layers))


class Hit(NamedTuple):
    id: str
    score: float  # exact cosine of the full vectors
    document: str
    metadata: dict[str, Any]


def stored_ids(collection: Collection, page: int = 5000) -> set[str]:
    ids: set[str] = set()
    while True:
        found = collection.get(include=[], limit=page, offset=len(ids))["ids"]
        ids.update(found)
        if len(found) < page:
            return ids


def rows_folder(client: ClientAPI, name: str) -> Path | None:
    """Where an embedded store keeps a funnel's full vectors as rows (`vector_rows`); None for a server."""
    settings = client.get_settings()
    return Path(settings.persist_directory) / ROWS_FOLDER / name if settings.is_persistent else None


class FunnelIndex:
    """A Chroma collection of full vectors and one of their first `shortlist_dims` components, same ids;
    in an embedded store also the full vectors as float16 rows of a memory-mapped file beside it
    (`vector_rows.VectorRows`), which re-ranking reads instead of asking Chroma for them.

    Fill it with `upsert` (or `rag.indexer.index_folder`, which keeps the parts in sync); search it
    with `search`. `embedder`: an encoder or one of this package's adapters; `client`: a Chroma
    client (default: `chroma.chroma_client()`). With a Chroma server there is no folder beside the
    store: re-ranking reads the candidates' full vectors from the full collection (slower).
    """

    def __init__(
        self,
        embedder: Any,
        collection_name: str | None = None,
        *,
        shortlist_dims: int,
        client: ClientAPI | None = None,
        create: bool = True,
        adopt: bool = False,
        full: Collection | None = None,
    ) -> None:
        """`create=False`: both collections must exist and the shortlist must be complete (to search, see
        `check_complete`), else `MissingIndex` or a ValueError; `adopt`: the full collection may be one built
        elsewhere (see `open_collection`); `full`: the full collection, already opened and checked for
        `embedder`'s space (`open_collection`, `stored_encoder`): it is not opened nor checked again."""
        self.encoder = as_encoder(embedder)
        self.shortlist_dims = check_shortlist_dims(shortlist_dims, self.encoder.dimensions)
        client = client or chroma_client()
        name = collection_name or DEFAULT_COLLECTION
        short = short_collection_name(name, shortlist_dims)
        if not create and has_collection(client, name) and not has_collection(client, short):
            raise MissingIndex(f"collection {name!r} has no shortlist collection {short!r} (made by indexing with shortlist_dims={shortlist_dims})")
        self.full = full if full is not None else open_collection(self.encoder, name, client=client, create=create, adopt=adopt)
        self.short = open_collection(self.encoder.with_dimensions(shortlist_dims), short, client=client, create=create)
        if not create:
            self.check_complete()
        folder = rows_folder(client, name)
        self.rows = VectorRows(folder, self.encoder.dimensions, owner=str(self.full.id)) if folder else None
        self._filters_checked = False

    def upsert(
        self,
        ids: Sequence[str],
        documents: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]] | None = None,
        vectors: np.ndarray | None = None,
    ) -> None:
        """Embed `documents` once (unless their full `vectors` are given); write the full vectors, their
        rows, then their prefixes (with the metadata, for filters; documents are read from the full collection)."""
        if vectors is None:
            vectors = self.encoder.encode_documents(list(documents))
        elif np.shape(vectors) != (len(ids), self.encoder.dimensions):
            raise ValueError(f"vectors must have shape ({len(ids)}, {self.encoder.dimensions}), got {np.shape(vectors)}")
        metadatas = list(metadatas) if metadatas else None
        self.full.upsert(ids=list(ids), embeddings=vectors, documents=list(documents), metadatas=metadatas)
        if self.rows is not None:
            self.rows.put(ids, vectors, documents, metadatas)
        self.short.upsert(ids=list(ids), embeddings=truncate_dimensions(vectors, self.shortlist_dims, self.encoder.normalize), metadatas=metadatas)

    def delete(self, ids: Sequence[str]) -> None:
        """Shortlist first, so that a search stops finding them before their other parts go."""
        self.short.delete(ids=list(ids))
        if self.rows is not None:
            self.rows.delete(ids)
        self.full.delete(ids=list(ids))

    def held_ids(self) -> list[set[str]]:
        """The ids each part holds: the full collection, the rows (when kept), the shortlist collection."""
        return [stored_ids(self.full), *([self.rows.ids()] if self.rows is not None else []), stored_ids(self.short)]

    def restore_from_full(self, held: list[set[str]], wanted: Iterable[str] | None = None) -> set[str]:
        """Give the rows and the shortlist the chunks (those `wanted`, default all) that the full collection
        holds and they lack (an index made before the rows were kept, a run stopped between parts), from
        the full collection's own vectors, so that nothing is embedded again. `held`: `held_ids()`, read
        once by the caller. Returns the ids restored."""
        full, *parts = held
        lacking = sorted((full - parts[0].intersection(*parts[1:])) & (full if wanted is None else set(wanted)))
        for start in range(0, len(lacking), 1000):
            stored = self.full.get(ids=lacking[start : start + 1000], include=["embeddings", "documents", "metadatas"])
            documents, metadatas = stored["documents"], stored["metadatas"]
            assert documents is not None and metadatas is not None, "included"
            self.upsert(stored["ids"], documents, metadatas, np.asarray(stored["embeddings"], dtype=np.float32))
        return set(lacking)

    def check_complete(self) -> None:
        """A ValueError when the short collection does not hold a prefix of every full vector."""
        full, short = self.full.count(), self.short.count()
        if short != full:
            raise ValueError(
                f"collection {self.short.name!r} holds {short} shortlist vectors for the {full} vectors of "
                f"{self.full.name!r}: index with shortlist_dims={self.shortlist_dims} first"
            )

    def search(self, query: str, k: int = 4, shortlist_factor: int = 10, where: dict[str, Any] | None = None) -> list[Hit]:
        """The k best documents for `query`: `k x shortlist_factor` candidates by the prefix, ranked by all.
        `where`: a Chroma metadata filter (`{"source": "a.md"}`, `{"$and": [...]}`), applied to the shortlist."""
        return self.search_vector(self.encoder.encode_queries([query])[0], k, shortlist_factor, where)

    def search_vector(self, query: np.ndarray, k: int = 4, shortlist_factor: int = 10, where: dict[str, Any] | None = None) -> list[Hit]:
        """`search` with the query's full vector already computed."""
        wanted = check_search(k, shortlist_factor)
        if where:
            self._check_filterable()
        short_query = truncate_dimensions(query[None, :], self.shortlist_dims, self.encoder.normalize)
        candidates = self.short.query(query_embeddings=short_query, n_results=wanted, where=where or None, include=[])["ids"][0]
        if not candidates:
            return []
        ids, vectors = self.full_vectors(candidates)
        order, scores = rerank(query, vectors, k)
        best = [ids[row] for row in order]
        found = self.records(best)  # for the k best only: reading records is what costs most in Chroma
        return [Hit(key, float(score), *found[key]) for key, score in zip(best, scores) if key in found]

    def full_vectors(self, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The full vectors of those of `ids` that are held (ids deleted meanwhile are left out): from the rows,
        and from the full collection for a server or for ids the rows lack (a run killed before writing them)."""
        found, vectors = self.rows.get(ids) if self.rows is not None else ([], np.empty((0, self.encoder.dimensions), np.float32))
        lacking = [key for key in ids if key not in set(found)] if len(found) < len(ids) else []
        if lacking:
            records = self.full.get(ids=lacking, include=["embeddings"])
            found, vectors = found + list(records["ids"]), np.concatenate([vectors, np.asarray(records["embeddings"], np.float32).reshape(-1, vectors.shape[1])])
        return found, vectors

    def records(self, ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """Text and metadata of those of `ids` that are held: from the rows, else from the full collection."""
        # `upsert` writes every chunk with its text and a dict of metadata (the rows and chromadb type them Optional, Mapping).
        found = cast("dict[str, tuple[str, dict[str, Any]]]", self.rows.records(ids)) if self.rows is not None else {}
        lacking = [key for key in ids if key not in found]
        if lacking:
            records = self.full.get(ids=lacking, include=["documents", "metadatas"])
            texts, metadatas = cast("list[str]", records["documents"]), cast("list[dict[str, Any] | None]", records["metadatas"])
            found.update((key, (text, metadata or {})) for key, text, metadata in zip(records["ids"], texts, metadatas))
        return found

    def _check_filterable(self) -> None:
        """Filters run on the shortlist collection's metadata, which indexes made before it was kept there lack."""
        if self._filters_checked:
            return
        sample = self.short.get(limit=1, include=["metadatas"])
        if sample["ids"] and not (sample["metadatas"] and sample["metadatas"][0]):
            full = self.full.get(ids=sample["ids"], include=["metadatas"])["metadatas"]
            if full and full[0]:
                raise ValueError(
                    f"collection {self.short.name!r} holds no metadata to filter by (indexed by an older version): "
                    f"delete it and index again with shortlist_dims={self.shortlist_dims}"
                )
        self._filters_checked = True
