"""LangChain `Embeddings` backed by a depth- and dimension-cut encoder, and a funnel retriever over Chroma."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.core.encoder import Matryoshka2DEncoder
from mm2d_integrations.core.validation import install_hint
from mm2d_integrations.frameworks.compat import their_arguments
from mm2d_integrations.frameworks.fields import EncoderFields, build_encoder, from_encoder_fields, path_to_str, vector_lists, wrapping
from mm2d_integrations.retrieval.funnel import check_search
from mm2d_integrations.serving.remote import RemoteEncoder

try:
    from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.stores import ByteStore
    from pydantic import BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator
except ImportError as error:
    raise ImportError(install_hint("langchain_core", "langchain")) from error

__all__ = ["FunnelRetriever", "Matryoshka2DEmbeddings", "cache_backed_embeddings", "chroma_vector_store"]


class Matryoshka2DEmbeddings(EncoderFields, Embeddings):
    """Embeddings for LangChain vector stores and retrievers; every `EncoderOptions` field is a field here.

    A drop-in for `HuggingFaceEmbeddings`: its `model_kwargs`, `encode_kwargs`, `query_encode_kwargs`,
    `cache_folder` and `show_progress` mean the same here (`compat` maps them; what has no
    equivalent is refused).

    Example:
        `Matryoshka2DEmbeddings(model="mixedbread-ai/mxbai-embed-2d-large-v1", num_layers=12, dimensions=256)`
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    model_name: Annotated[str, BeforeValidator(path_to_str)] = Field(default_factory=default_model, alias="model")
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Encoder options by name, or SentenceTransformer(...) arguments as HuggingFaceEmbeddings takes them."""
    encode_kwargs: dict[str, Any] = Field(default_factory=dict)
    """SentenceTransformer.encode(...) arguments for documents (and queries, unless `query_encode_kwargs`)."""
    query_encode_kwargs: dict[str, Any] = Field(default_factory=dict)
    """SentenceTransformer.encode(...) arguments for queries."""

    @model_validator(mode="before")
    @classmethod
    def _their_arguments(cls, data: Any) -> Any:
        return their_arguments(data, {})

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo) -> Matryoshka2DEmbeddings:
        self._encoder = build_encoder(self, info)
        return self

    @classmethod
    def from_encoder(cls, encoder: Matryoshka2DEncoder | RemoteEncoder) -> Matryoshka2DEmbeddings:
        """Embeddings that use `encoder` itself (its loaded model and every option it was built with)."""
        return cls.model_validate(from_encoder_fields(encoder), context=wrapping(encoder))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return vector_lists(self.encoder.encode_documents(texts))

    def embed_query(self, text: str) -> list[float]:
        return vector_lists(self.encoder.encode_queries([text]))[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return vector_lists(await self.encoder.aencode_documents(texts))

    async def aembed_query(self, text: str) -> list[float]:
        return vector_lists(await self.encoder.aencode_queries([text]))[0]


def cache_backed_embeddings(
    embeddings: Matryoshka2DEmbeddings,
    store: ByteStore,
    *,
    namespace: str = "",
    query_store: ByteStore | None = None,
    batch_size: int | None = None,
) -> Any:
    """LangChain's `CacheBackedEmbeddings` over `embeddings`, keyed by `namespace`, the embedding space
    (`embeddings.space_id`) and the text: another depth, width, prompt or model never reads this
    one's vectors. Queries are cached too (in `query_store`, default `store`), apart from documents:
    a query's vector is not its text's document vector.
    """
    try:
        from langchain_classic.embeddings import CacheBackedEmbeddings
    except ImportError as error:
        raise ImportError(install_hint("langchain_classic", "langchain-cache")) from error

    def keyed(kind: str, kept_in: ByteStore) -> Any:  # "-" and "/" are what LocalFileStore allows in keys
        namespaced = f"{namespace}mm2d-{embeddings.space_id}/{kind}/"
        return CacheBackedEmbeddings.from_bytes_store(embeddings, kept_in, namespace=namespaced, key_encoder="sha256").document_embedding_store

    return CacheBackedEmbeddings(
        embeddings, keyed("document", store), batch_size=batch_size, query_embedding_store=keyed("query", query_store or store)
    )


def chroma_vector_store(embeddings: Matryoshka2DEmbeddings, collection_name: str | None = None, *, adopt: bool = False, **where: Any) -> Any:
    """A `langchain_chroma.Chroma` over a collection checked to hold `embeddings`' vector space.

    `where`: `persist_dir`, `host` and `port`, or `client` (see `chroma.open_store`). `adopt`: take over a
    collection built with plain `Chroma(...)` / `Chroma.from_documents`, once a sample of its documents
    embedded again matches their stored vectors (`chroma.open_collection`).
    """
    try:
        from langchain_chroma import Chroma

        from mm2d_integrations.chroma import open_store
    except ImportError as error:
        raise ImportError(install_hint("langchain_chroma", "rag")) from error

    client, collection = open_store(embeddings, collection_name, adopt=adopt, **where)
    return Chroma(
        client=client, collection_name=collection.name, embedding_function=embeddings,
        create_collection_if_not_exists=False,
    )


class FunnelRetriever(BaseRetriever):
    """Shortlists by a prefix of the vectors, ranks by all of them (see `chroma.FunnelIndex`).

    Example:
        `FunnelRetriever(index=FunnelIndex(embeddings, "docs", shortlist_dims=64, client=client), k=4,
        search_kwargs={"filter": {"source": "a.md"}})`
    Documents carry their stored metadata (`source` ...), their id and, as `score`, their exact cosine.
    """

    index: Any
    """A `chroma.FunnelIndex` (typed loosely so that this module does not need chromadb)."""
    k: int = 4
    shortlist_factor: int = 10
    search_kwargs: dict[str, Any] = Field(default_factory=dict)
    """As for the Chroma vector store's retriever: `k`, and a Chroma metadata filter as `filter` (or `where`),
    e.g. `{"filter": {"source": "a.md"}}`; it selects the shortlist, so the k results all match it."""

    @field_validator("index")
    @classmethod
    def _check_index(cls, index: Any) -> Any:
        from mm2d_integrations.chroma import FunnelIndex  # only a funnel retriever needs chromadb

        if not isinstance(index, FunnelIndex):
            raise TypeError(f"index must be a mm2d_integrations.chroma.FunnelIndex, got {type(index).__name__}")
        return index

    @model_validator(mode="after")
    def _check(self) -> FunnelRetriever:
        unknown = sorted(set(self.search_kwargs) - {"k", "filter", "where"})
        if unknown:
            raise ValueError(f"search_kwargs may hold k and filter (or where), got {', '.join(map(repr, unknown))}")
        if "filter" in self.search_kwargs and "where" in self.search_kwargs:
            raise ValueError("search_kwargs: give filter or where, not both")
        if "k" in self.search_kwargs:
            self.k = self.search_kwargs["k"]
        check_search(self.k, self.shortlist_factor)
        return self

    def _documents(self, query: str) -> list[Document]:
        where = self.search_kwargs.get("filter", self.search_kwargs.get("where"))
        return [
            Document(page_content=hit.document, metadata={**hit.metadata, "score": hit.score}, id=hit.id)
            for hit in self.index.search(query, self.k, self.shortlist_factor, where)
        ]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return self._documents(query)

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun) -> list[Document]:
        """In a worker thread: encoding the query and searching never block the event loop."""
        return await asyncio.to_thread(self._documents, query)
