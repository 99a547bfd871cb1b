"""LlamaIndex `BaseEmbedding` backed by a depth- and dimension-cut encoder, and a funnel retriever over Chroma."""

from __future__ import annotations

from typing import Annotated, Any

from mm2d_integrations.encoder import Matryoshka2DEncoder, encoder_from_fields, require
from mm2d_integrations.funnel import FunnelIndex, check_search
from mm2d_integrations.loading import default_model, path_to_str

require("llama_index.core", "llamaindex")

from llama_index.core.base.base_retriever import BaseRetriever  # noqa: E402
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding  # noqa: E402
from llama_index.core.bridge.pydantic import BeforeValidator, Field, PrivateAttr, model_validator  # noqa: E402
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode  # noqa: E402


class Matryoshka2DEmbedding(BaseEmbedding):
    """Embeddings for LlamaIndex indexes and query engines; a batch goes to the model as one batch."""

    model_name: Annotated[str, BeforeValidator(path_to_str)] = Field(default_factory=default_model)
    embed_batch_size: int = Field(default=32, gt=0, le=2048)
    num_layers: int | None = None
    dimensions: int | None = None
    pooling: str | None = None
    query_prompt: str | None = None
    document_prompt: str | None = None
    normalize: bool = True
    max_length: int | None = None
    device: str | None = None
    dtype: str | None = None
    precision: str = "float32"
    """`float32` (exact) or `bf16` (bfloat16 autocast: about twice as fast on CPUs with native bf16)."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)

    _encoder: Matryoshka2DEncoder = PrivateAttr()

    @model_validator(mode="after")
    def _load(self) -> Matryoshka2DEmbedding:
        self._encoder = encoder_from_fields(self.model_name, self, {"batch_size": self.embed_batch_size, **self.model_kwargs})
        self.num_layers, self.dimensions = self._encoder.num_layers, self._encoder.dimensions
        return self

    @classmethod
    def class_name(cls) -> str:
        return "Matryoshka2DEmbedding"

    @classmethod
    def from_encoder(cls, encoder: Matryoshka2DEncoder) -> Matryoshka2DEmbedding:
        """An embedding configured like `encoder` (and sharing its loaded model)."""
        options = encoder.options()
        return cls(model_name=encoder.model_name, embed_batch_size=options.pop("batch_size"), **options)

    @property
    def encoder(self) -> Matryoshka2DEncoder:
        return self._encoder

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._encoder.encode_queries([query])[0].tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._encoder.encode_documents([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._encoder.encode_documents(texts).tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._encoder.aencode_queries([query]))[0].tolist()

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._encoder.aencode_documents([text]))[0].tolist()

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return (await self._encoder.aencode_documents(texts)).tolist()


def chroma_vector_store(embedding: Matryoshka2DEmbedding, collection_name: str | None = None, **where: Any) -> Any:
    """A `ChromaVectorStore` over a collection checked to hold `embedding`'s vector space.

    `where`: `persist_dir`, `host` and `port`, or `client` (see `chroma.open_store`). Build the index
    with the same `embedding`: `VectorStoreIndex.from_vector_store(store, embed_model=embedding)`.
    """
    require("llama_index.vector_stores.chroma", "rag")
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from mm2d_integrations.chroma import open_store

    _, collection = open_store(embedding, collection_name, **where)
    return ChromaVectorStore(chroma_collection=collection)


class FunnelRetriever(BaseRetriever):
    """Shortlists by a prefix of the vectors, ranks by all of them (see `funnel.FunnelIndex`).

    Example: `FunnelRetriever(FunnelIndex(embedding, "docs", shortlist_dims=64, client=client), similarity_top_k=4)`.
    Nodes carry their stored metadata (`source` ...) and id; their score is the exact cosine.
    """

    def __init__(self, index: FunnelIndex, similarity_top_k: int = 4, shortlist_factor: int = 10, **kwargs: Any) -> None:
        check_search(similarity_top_k, shortlist_factor, k_name="similarity_top_k")
        self.index, self.similarity_top_k, self.shortlist_factor = index, similarity_top_k, shortlist_factor
        super().__init__(**kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [
            NodeWithScore(node=TextNode(id_=hit.id, text=hit.document, metadata=hit.metadata), score=hit.score)
            for hit in self.index.search(query_bundle.query_str, self.similarity_top_k, self.shortlist_factor)
        ]
