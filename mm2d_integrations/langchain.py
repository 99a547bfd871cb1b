"""LangChain `Embeddings` backed by a depth- and dimension-cut encoder."""

from __future__ import annotations

from typing import Annotated, Any

from mm2d_integrations.encoder import Matryoshka2DEncoder, encoder_from_fields, require
from mm2d_integrations.loading import default_model, path_to_str

require("langchain_core", "langchain")

from langchain_core.embeddings import Embeddings  # noqa: E402
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


def chroma_vector_store(
    embeddings: Matryoshka2DEmbeddings,
    collection_name: str | None = None,
    *,
    persist_dir: str | None = None,
    host: str | None = None,
    port: int | None = None,
    client: Any = None,
) -> Any:
    """A `langchain_chroma.Chroma` over a collection checked to hold `embeddings`' vector space."""
    require("langchain_chroma", "rag")
    from langchain_chroma import Chroma

    from mm2d_integrations.chroma import DEFAULT_COLLECTION, chroma_client, open_collection

    client = client or chroma_client(persist_dir, host, port)
    name = collection_name or DEFAULT_COLLECTION
    open_collection(embeddings, name, client=client)
    return Chroma(client=client, collection_name=name, embedding_function=embeddings, create_collection_if_not_exists=False)
