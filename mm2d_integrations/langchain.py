"""LangChain `Embeddings` backed by a depth- and dimension-cut encoder, and a funnel retriever over Chroma."""

from __future__ import annotations

from typing import Annotated, Any

from mm2d_integrations.encoder import Matryoshka2DEncoder, encoder_from_fields, require
from mm2d_integrations.funnel import FunnelIndex, check_search
from mm2d_integrations.loading import default_model, path_to_str

require("langchain_core", "langchain")

from langchain_core.callbacks import CallbackManagerForRetrieverRun  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator  # noqa: E402


class Matryoshka2DEmbeddings(BaseModel, Embeddings):
    """Embeddings for LangChain vector stores and retrievers.

    Example:
        `Matryoshka2DEmbeddings(model="mixedbread-ai/mxbai-embed-2d-large-v1", num_layers=12, dimensions=256)`
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    model_name: Annotated[str, BeforeValidator(path_to_str)] = Field(default_factory=default_model, alias="model")
    num_layers: int | None = None
    dimensions: int | None = None
    pooling: str | None = None
    query_prompt: str | None = None
    document_prompt: str | None = None
    normalize: bool = True
    batch_size: int = 32
    max_length: int | None = None
    device: str | None = None
    dtype: str | None = None
    precision: str = "float32"
    """`float32` (exact) or `bf16` (bfloat16 autocast: about twice as fast on CPUs with native bf16)."""
    show_progress: bool = False
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further `Matryoshka2DEncoder` arguments: revision, trust_remote_code, allow_pickle."""

    _encoder: Matryoshka2DEncoder = PrivateAttr()

    @model_validator(mode="after")
    def _load(self) -> Matryoshka2DEmbeddings:
        self._encoder = encoder_from_fields(self.model_name, self, self.model_kwargs)
        self.num_layers, self.dimensions = self._encoder.num_layers, self._encoder.dimensions
        return self

    @classmethod
    def from_encoder(cls, encoder: Matryoshka2DEncoder) -> Matryoshka2DEmbeddings:
        """Embeddings configured like `encoder` (and sharing its loaded model)."""
        return cls(model=encoder.model_name, **encoder.options())

    @property
    def encoder(self) -> Matryoshka2DEncoder:
        return self._encoder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._encoder.encode_documents(texts, show_progress=self.show_progress).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self._encoder.encode_queries([text])[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return (await self._encoder.aencode_documents(texts)).tolist()

    async def aembed_query(self, text: str) -> list[float]:
        return (await self._encoder.aencode_queries([text]))[0].tolist()


def chroma_vector_store(embeddings: Matryoshka2DEmbeddings, collection_name: str | None = None, **where: Any) -> Any:
    """A `langchain_chroma.Chroma` over a collection checked to hold `embeddings`' vector space.

    `where`: `persist_dir`, `host` and `port`, or `client` (see `chroma.open_store`).
    """
    require("langchain_chroma", "rag")
    from langchain_chroma import Chroma

    from mm2d_integrations.chroma import open_store

    client, collection = open_store(embeddings, collection_name, **where)
    return Chroma(
        client=client, collection_name=collection.name, embedding_function=embeddings,
        create_collection_if_not_exists=False,
    )


class FunnelRetriever(BaseRetriever):
    """Shortlists by a prefix of the vectors, ranks by all of them (see `funnel.FunnelIndex`).

    Example:
        `FunnelRetriever(index=FunnelIndex(embeddings, "docs", shortlist_dims=64, client=client), k=4)`
    Documents carry their stored metadata (`source` ...), their id and, as `score`, their exact cosine.
    """

    index: FunnelIndex
    k: int = 4
    shortlist_factor: int = 10

    @model_validator(mode="after")
    def _check(self) -> FunnelRetriever:
        check_search(self.k, self.shortlist_factor)
        return self

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [
            Document(page_content=hit.document, metadata={**hit.metadata, "score": hit.score}, id=hit.id)
            for hit in self.index.search(query, self.k, self.shortlist_factor)
        ]
