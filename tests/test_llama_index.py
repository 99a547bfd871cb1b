from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import TextNode

from mm2d_integrations.llama_index import Matryoshka2DEmbedding
from tests.corpus import DOCUMENTS, QUESTIONS
from tests.test_langchain import MINILM


def test_llama_index_conventions() -> None:
    embedding = Matryoshka2DEmbedding(model_name=MINILM, num_layers=3, dimensions=96, query_prompt="q: ")
    assert BaseEmbedding in type(embedding).__mro__
    assert Matryoshka2DEmbedding.class_name() == "Matryoshka2DEmbedding"
    assert embedding.embed_batch_size == 32
    data = embedding.to_dict()
    assert data["class_name"] == "Matryoshka2DEmbedding"
    assert (data["num_layers"], data["dimensions"], data["query_prompt"]) == (3, 96, "q: ")
    restored = Matryoshka2DEmbedding.from_dict(data)
    assert (restored.num_layers, restored.dimensions, restored.encoder.num_layers) == (3, 96, 3)
    assert restored.get_query_embedding("x") == embedding.get_query_embedding("x")


def test_a_batch_goes_to_the_model_as_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    embedding = Matryoshka2DEmbedding(model_name=MINILM, embed_batch_size=8)
    calls: list[int] = []
    original = embedding.encoder.encode_documents
    monkeypatch.setattr(embedding.encoder, "encode_documents", lambda texts, **kw: calls.append(len(texts)) or original(texts, **kw))
    vectors = embedding.get_text_embedding_batch([f"text {i}" for i in range(20)])
    assert calls == [8, 8, 4] and len(vectors) == 20


def test_query_prompt_reaches_queries_only() -> None:
    embedding = Matryoshka2DEmbedding(model_name=MINILM, query_prompt="query: ")
    query = embedding.get_query_embedding("heat pumps")
    np.testing.assert_allclose(query, embedding.get_text_embedding("query: heat pumps"), atol=1e-6)
    assert np.dot(query, embedding.get_text_embedding("heat pumps")) < 0.999


async def test_async_variants_match() -> None:
    embedding = Matryoshka2DEmbedding(model_name=MINILM, dimensions=64)
    query, text, texts = await asyncio.gather(
        embedding.aget_query_embedding("a"), embedding.aget_text_embedding("b"), embedding.aget_text_embedding_batch(["c", "d"])
    )
    assert query == embedding.get_query_embedding("a") and text == embedding.get_text_embedding("b")
    assert texts == embedding.get_text_embedding_batch(["c", "d"])


@pytest.mark.parametrize("dimensions", [384, 128])
def test_vector_store_index_over_chroma_finds_the_expected_document(tmp_path: Path, dimensions: int) -> None:
    import chromadb
    from llama_index.vector_stores.chroma import ChromaVectorStore

    collection = chromadb.PersistentClient(path=str(tmp_path)).get_or_create_collection("docs")
    storage = StorageContext.from_defaults(vector_store=ChromaVectorStore(chroma_collection=collection))
    embedding = Matryoshka2DEmbedding(model_name=MINILM, dimensions=dimensions)
    nodes = [TextNode(text=text, id_=key) for key, text in DOCUMENTS.items()]
    retriever = VectorStoreIndex(nodes, storage_context=storage, embed_model=embedding).as_retriever(similarity_top_k=1)
    assert {question: retriever.retrieve(question)[0].node.node_id for question in QUESTIONS} == QUESTIONS
