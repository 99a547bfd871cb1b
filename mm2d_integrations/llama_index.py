"""LlamaIndex `BaseEmbedding` backed by a depth- and dimension-cut encoder, and a funnel retriever over Chroma."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any

from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.core.encoder import Matryoshka2DEncoder
from mm2d_integrations.core.validation import install_hint
from mm2d_integrations.frameworks.compat import LLAMA_INDEX_ARGUMENTS, their_arguments
from mm2d_integrations.frameworks.fields import EncoderFields, build_encoder, from_encoder_fields, path_to_str, vector_lists, wrapping
from mm2d_integrations.retrieval.funnel import check_search
from mm2d_integrations.serving.remote import RemoteEncoder

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
    from llama_index.core.bridge.pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.core.storage.kvstore.types import DEFAULT_COLLECTION, BaseKVStore
    from llama_index.core.vector_stores.types import MetadataFilters
except ImportError as error:
    raise ImportError(install_hint("llama_index.core", "llamaindex")) from error

__all__ = ["FunnelRetriever", "Matryoshka2DEmbedding", "SpaceKVStore", "chroma_vector_store"]

_EMBEDDING_QUERIES: ContextVar[bool] = ContextVar("mm2d_embedding_queries", default=False)


@contextmanager
def _queries() -> Iterator[None]:
    """While a query is embedded, `SpaceKVStore` reads and writes the queries' collections."""
    token = _EMBEDDING_QUERIES.set(True)
    try:
        yield
    finally:
        _EMBEDDING_QUERIES.reset(token)


class SpaceKVStore(BaseKVStore):
    """`store` seen through collections named after an embedding space, queries apart from texts.

    LlamaIndex's `embeddings_cache` keys vectors by text alone, in one collection for queries and
    texts: after a change of depth, width or prompt it would return the old space's vectors, and a
    query's cached vector could be a document's. `Matryoshka2DEmbedding` wraps the store it is given.
    """

    def __init__(self, store: BaseKVStore, namespace: str) -> None:
        self.store, self.namespace = store, namespace

    def _collection(self, collection: str) -> str:
        return f"{self.namespace}/{'query' if _EMBEDDING_QUERIES.get() else 'text'}/{collection}"

    def put(self, key: str, val: dict[str, Any], collection: str = DEFAULT_COLLECTION) -> None:
        self.store.put(key, val, self._collection(collection))

    async def aput(self, key: str, val: dict[str, Any], collection: str = DEFAULT_COLLECTION) -> None:
        await self.store.aput(key, val, self._collection(collection))

    def get(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict[str, Any] | None:
        return self.store.get(key, self._collection(collection))

    async def aget(self, key: str, collection: str = DEFAULT_COLLECTION) -> dict[str, Any] | None:
        return await self.store.aget(key, self._collection(collection))

    def get_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict[str, Any]]:
        return self.store.get_all(self._collection(collection))

    async def aget_all(self, collection: str = DEFAULT_COLLECTION) -> dict[str, dict[str, Any]]:
        return await self.store.aget_all(self._collection(collection))

    def delete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        return self.store.delete(key, self._collection(collection))

    async def adelete(self, key: str, collection: str = DEFAULT_COLLECTION) -> bool:
        return await self.store.adelete(key, self._collection(collection))


class Matryoshka2DEmbedding(BaseEmbedding, EncoderFields):
    """Embeddings for LlamaIndex indexes and query engines; every `EncoderOptions` field is a field here.
    LlamaIndex's `embed_batch_size` texts go to the model as one batch (`batch_size` follows it unless given).

    `embeddings_cache` (LlamaIndex's embedding cache, a `BaseKVStore`) is read through `SpaceKVStore`:
    namespaced by the embedding space, queries apart.

    A drop-in for `HuggingFaceEmbedding`: its `query_instruction`, `text_instruction` and `truncate_dim`
    set `query_prompt`, `document_prompt` and `dimensions`, `show_progress_bar` sets `show_progress`;
    `device`, `normalize`, `max_length`, `cache_folder` and `trust_remote_code` are named alike. Unknown arguments are refused.
    """

    model_config = ConfigDict(extra="forbid")

    model_name: Annotated[str, BeforeValidator(path_to_str)] = Field(default_factory=default_model)
    embed_batch_size: int = Field(default=32, gt=0, le=2048)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Encoder options by name (each also a field), or SentenceTransformer(...) arguments."""

    @model_validator(mode="before")
    @classmethod
    def _their_arguments(cls, data: Any) -> Any:
        return their_arguments(data, LLAMA_INDEX_ARGUMENTS)

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo) -> Matryoshka2DEmbedding:
        follows = {} if "batch_size" in self.model_fields_set else {"batch_size": self.embed_batch_size}
        self._encoder = build_encoder(self, info, **follows)
        if self.embeddings_cache is not None:
            store = self.embeddings_cache.store if isinstance(self.embeddings_cache, SpaceKVStore) else self.embeddings_cache
            self.embeddings_cache = SpaceKVStore(store, f"mm2d-{self.space_id}")
        return self

    @classmethod
    def class_name(cls) -> str:
        return "Matryoshka2DEmbedding"

    def __setstate__(self, state: dict[str, Any]) -> None:
        """The fields as pickled, the encoder loaded on first use (LlamaIndex's own __setstate__ would
        build it from the fields at once); a field LlamaIndex left out as unpicklable gets its default."""
        for name, field in type(self).model_fields.items():
            state["__dict__"].setdefault(name, field.get_default(call_default_factory=True))
        BaseModel.__setstate__(self, state)

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        """LlamaIndex's serialised form (`to_json`, ingestion caches), naming the model by a reference that
        resolves in another environment (`package:<module>` for a packaged model, as Chroma's stored
        configuration does), not by this machine's site-packages path."""
        data = super().to_dict(**kwargs)
        data["model_name"] = self._encoder.recipe.model
        return data

    @classmethod
    def from_encoder(cls, encoder: Matryoshka2DEncoder | RemoteEncoder) -> Matryoshka2DEmbedding:
        """An embedding that uses `encoder` itself (its loaded model and every option it was built with)."""
        fields = from_encoder_fields(encoder)
        fields["embed_batch_size"] = fields["batch_size"]
        return cls.model_validate(fields, context=wrapping(encoder))

    def get_query_embedding(self, query: str) -> Embedding:
        with _queries():
            return super().get_query_embedding(query)

    async def aget_query_embedding(self, query: str) -> Embedding:
        with _queries():
            return await super().aget_query_embedding(query)

    def _get_query_embedding(self, query: str) -> Embedding:
        return vector_lists(self.encoder.encode_queries([query]))[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return vector_lists(self.encoder.encode_documents([text]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return vector_lists(self.encoder.encode_documents(texts))

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return vector_lists(await self.encoder.aencode_queries([query]))[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return vector_lists(await self.encoder.aencode_documents([text]))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return vector_lists(await self.encoder.aencode_documents(texts))


def chroma_vector_store(embedding: Matryoshka2DEmbedding, collection_name: str | None = None, *, adopt: bool = False, **where: Any) -> Any:
    """A `ChromaVectorStore` over a collection checked to hold `embedding`'s vector space.

    `where`: `persist_dir`, `host` and `port`, or `client` (see `chroma.open_store`). Build the index
    with the same `embedding`: `VectorStoreIndex.from_vector_store(store, embed_model=embedding)`.
    `adopt`: take over a collection built with a plain `ChromaVectorStore`, once a sample of its nodes
    embedded again (their text with the metadata LlamaIndex embedded) matches their stored vectors (`chroma.open_collection`).
    """
    try:
        from llama_index.vector_stores.chroma import ChromaVectorStore

        from mm2d_integrations.chroma import open_store
    except ImportError as error:
        raise ImportError(install_hint("llama_index.vector_stores.chroma", "rag")) from error

    _, collection = open_store(embedding, collection_name, adopt=adopt, embedded_text=_embedded_text, **where)
    return ChromaVectorStore(chroma_collection=collection)


def _embedded_text(document: str, metadata: dict[str, Any]) -> str:
    """What a `VectorStoreIndex` embedded for a node that `ChromaVectorStore` stored: its text with the
    metadata it lets the embedding see (kept, with the node, in `_node_content`); the document where there is none."""
    if "_node_content" not in metadata:
        return document
    from llama_index.core.schema import MetadataMode
    from llama_index.core.vector_stores.utils import metadata_dict_to_node

    return metadata_dict_to_node(metadata, text=document).get_content(metadata_mode=MetadataMode.EMBED)


class FunnelRetriever(BaseRetriever):
    """Shortlists by a prefix of the vectors, ranks by all of them (see `chroma.FunnelIndex`).

    Example: `FunnelRetriever(FunnelIndex(embedding, "docs", shortlist_dims=64, client=client), similarity_top_k=4,
    filters=MetadataFilters(filters=[MetadataFilter(key="source", value="a.md")]))`.
    Nodes carry their stored metadata (`source` ...) and id; their score is the exact cosine.
    """

    def __init__(
        self, index: Any, similarity_top_k: int = 4, shortlist_factor: int = 10, filters: MetadataFilters | None = None, **kwargs: Any
    ) -> None:
        """`index`: a `chroma.FunnelIndex`; `filters`: as for a `VectorStoreIndex` retriever over Chroma,
        turned into Chroma's `where` by llama-index-vector-stores-chroma's own conversion; they select the shortlist."""
        check_search(similarity_top_k, shortlist_factor, k_name="similarity_top_k")
        self.index, self.similarity_top_k, self.shortlist_factor = index, similarity_top_k, shortlist_factor
        self.where = _chroma_where(filters) if filters is not None else None
        super().__init__(**kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [
            NodeWithScore(node=TextNode(id_=hit.id, text=hit.document, metadata=hit.metadata), score=hit.score)
            for hit in self.index.search(query_bundle.query_str, self.similarity_top_k, self.shortlist_factor, self.where)
        ]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """In a worker thread: encoding the query and searching never block the event loop."""
        return await asyncio.to_thread(self._retrieve, query_bundle)


def _chroma_where(filters: MetadataFilters) -> dict[str, Any]:
    try:
        from llama_index.vector_stores.chroma.base import _to_chroma_filter  # what ChromaVectorStore.query applies
    except ImportError as error:
        raise ImportError(install_hint("llama_index.vector_stores.chroma", "rag")) from error
    return _to_chroma_filter(filters)
