"""Their caches: LangChain's CacheBackedEmbeddings and LlamaIndex's embeddings_cache key vectors by
text; ours are namespaced by the embedding space (`space_id`), queries apart from documents."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_core.stores import InMemoryByteStore
from llama_index.core.storage.kvstore import SimpleKVStore

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.langchain import Matryoshka2DEmbeddings, cache_backed_embeddings
from mm2d_integrations.llama_index import Matryoshka2DEmbedding
from tests.test_langchain import MINILM

TEXTS = ["heat pumps in winter", "solar panels on a roof"]


def test_space_id_changes_with_the_space_only() -> None:
    base = Matryoshka2DEncoder(MINILM, num_layers=3, dimensions=128)
    assert len(base.space_id) == 16 and base.space_id == Matryoshka2DEncoder(MINILM, num_layers=3, dimensions=128).space_id
    same_space = [{"batch_size": 4}, {"device": "cpu"}, {"compute_precision": "bf16"}, {"max_batch_tokens": 99}]
    for change in same_space:
        assert Matryoshka2DEncoder(MINILM, num_layers=3, dimensions=128, **change).space_id == base.space_id, change
    other_spaces = [
        {"num_layers": 2}, {"dimensions": 64}, {"query_prompt": "q: "}, {"document_prompt": "d: "}, {"pooling": "cls"},
        {"normalize": False}, {"max_length": 32},
    ]
    for change in other_spaces:
        assert Matryoshka2DEncoder(MINILM, **{"num_layers": 3, "dimensions": 128, **change}).space_id != base.space_id, change
    assert Matryoshka2DEmbeddings.from_encoder(base).space_id == Matryoshka2DEmbedding.from_encoder(base).space_id == base.space_id


def _counting(embedder, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of texts each call sends to the model."""
    calls: list[int] = []
    encoder = embedder.encoder
    for name in ("encode_documents", "encode_queries"):
        original = getattr(encoder, name)
        monkeypatch.setattr(encoder, name, lambda texts, _original=original, **kw: calls.append(len(texts)) or _original(texts, **kw))
    return calls


def test_langchain_cache_is_namespaced_by_the_space_and_keeps_queries_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    store = InMemoryByteStore()
    shallow = Matryoshka2DEmbeddings(model=MINILM, num_layers=3, query_prompt="query: ")
    cached = cache_backed_embeddings(shallow, store, namespace="docs-")
    calls = _counting(shallow, monkeypatch)
    first = cached.embed_documents(TEXTS)
    assert cached.embed_documents(TEXTS) == first and calls == [2]  # a hit: the same vectors, no model call
    assert all(key.startswith(f"docs-mm2d-{shallow.space_id}/document/") for key in store.yield_keys())

    query = cached.embed_query(TEXTS[0])  # the same text as a document, another vector
    assert cached.embed_query(TEXTS[0]) == query and calls == [2, 1]
    np.testing.assert_allclose(query, shallow.embed_query(TEXTS[0]), atol=1e-6)
    assert np.dot(query, first[0]) < 0.999

    for other in (Matryoshka2DEmbeddings(model=MINILM, num_layers=2, query_prompt="query: "),
                  Matryoshka2DEmbeddings(model=MINILM, num_layers=3, dimensions=64, query_prompt="query: ")):
        again = cache_backed_embeddings(other, store, namespace="docs-")  # same store and namespace
        np.testing.assert_allclose(again.embed_documents(TEXTS), other.embed_documents(TEXTS), atol=1e-6)
        np.testing.assert_allclose(again.embed_query(TEXTS[0]), other.embed_query(TEXTS[0]), atol=1e-6)


def test_llama_index_cache_is_namespaced_by_the_space_and_keeps_queries_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    store = SimpleKVStore()
    shallow = Matryoshka2DEmbedding(model_name=MINILM, num_layers=3, query_prompt="query: ", embeddings_cache=store)
    calls = _counting(shallow, monkeypatch)
    first = shallow.get_text_embedding_batch(TEXTS)
    assert shallow.get_text_embedding_batch(TEXTS) == first and calls == [2]
    assert shallow.get_text_embedding(TEXTS[0]) == first[0] and calls == [2]

    query = shallow.get_query_embedding(TEXTS[0])
    assert shallow.get_query_embedding(TEXTS[0]) == query and calls == [2, 1]
    np.testing.assert_allclose(query, shallow.encoder.encode_queries([TEXTS[0]])[0], atol=1e-6)
    assert np.dot(query, first[0]) < 0.999

    for change in ({"num_layers": 2}, {"dimensions": 64}):
        other = Matryoshka2DEmbedding(model_name=MINILM, **{"num_layers": 3, "query_prompt": "query: ", **change}, embeddings_cache=store)
        np.testing.assert_allclose(other.get_text_embedding_batch(TEXTS), other.encoder.encode_documents(TEXTS), atol=1e-6)
        np.testing.assert_allclose(other.get_query_embedding(TEXTS[0]), other.encoder.encode_queries([TEXTS[0]])[0], atol=1e-6)
    rebuilt = Matryoshka2DEmbedding(model_name=MINILM, num_layers=3, query_prompt="query: ", embeddings_cache=shallow.embeddings_cache)
    assert rebuilt.embeddings_cache.store is store  # wrapped once, however often it is handed on
