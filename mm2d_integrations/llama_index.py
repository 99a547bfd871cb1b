"""LlamaIndex `BaseEmbedding` backed by a depth- and dimension-cut encoder."""

from __future__ import annotations

from typing import Annotated, Any

from mm2d_integrations.encoder import Matryoshka2DEncoder, encoder_from_fields, require
from mm2d_integrations.loading import default_model, path_to_str

require("llama_index.core", "llamaindex")

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding  # noqa: E402
from llama_index.core.bridge.pydantic import BeforeValidator, Field, PrivateAttr, model_validator  # noqa: E402


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


def chroma_vector_store(
    embedding: Matryoshka2DEmbedding,
    collection_name: str | None = None,
    *,
    persist_dir: str | None = None,
    host: str | None = None,
    port: int | None = None,
    client: Any = None,
) -> Any:
    """A `ChromaVectorStore` over a collection checked to hold `embedding`'s vector space.

    Build the index with the same `embedding`: `VectorStoreIndex.from_vector_store(store, embed_model=embedding)`.
    """
    require("llama_index.vector_stores.chroma", "rag")
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from mm2d_integrations.chroma import DEFAULT_COLLECTION, chroma_client, open_collection

    collection = open_collection(embedding, collection_name or DEFAULT_COLLECTION, client=client or chroma_client(persist_dir, host, port))
    return ChromaVectorStore(chroma_collection=collection)
