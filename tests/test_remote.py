"""The remote backend: adapters and Chroma's function over `mm2d serve` on loopback, through the real mixedbread SDK."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from mm2d_integrations.chroma import EmbeddingSpaceMismatch, Matryoshka2DEmbeddingFunction, open_collection, stored_embedding_function
from mm2d_integrations.core.encoder import Matryoshka2DEncoder
from mm2d_integrations.langchain import Matryoshka2DEmbeddings
from mm2d_integrations.llama_index import Matryoshka2DEmbedding
from mm2d_integrations.serving.remote import RemoteEmbeddingError, RemoteEncoder
from mm2d_integrations.serving.server import create_app, serving_in_background

MODEL = "minilm"
KEY = "loopback-key"
TEXTS = ["A cat sits on the mat.", "Stock markets fell sharply on Monday.", "The recipe needs two eggs and flour."]


def _assert_same(remote: Any, local: np.ndarray) -> None:
    remote = np.asarray(remote, np.float64)
    assert remote.shape == local.shape
    cosines = np.sum(remote * local, axis=1) / (np.linalg.norm(remote, axis=1) * np.linalg.norm(local, axis=1))
    assert cosines.min() >= 0.99999


@pytest.fixture(scope="module")
def local(minilm_path: Path) -> Matryoshka2DEncoder:
    return Matryoshka2DEncoder(minilm_path)


@pytest.fixture(scope="module")
def url(local: Matryoshka2DEncoder) -> Iterator[str]:
    with serving_in_background(create_app(local, api_key=KEY, model_name=MODEL)) as base:
        yield base


@pytest.mark.parametrize(("num_layers", "dimensions"), [(None, None), (6, 384), (3, 64), (1, 32)])
def test_remote_vectors_equal_the_local_encoders_at_each_depth_and_width(
    url: str, minilm_path: Path, num_layers: int | None, dimensions: int | None
) -> None:
    options = {"num_layers": num_layers, "dimensions": dimensions, "query_prompt": "query: "}
    remote = RemoteEncoder(url, MODEL, api_key=KEY, **options)
    local = Matryoshka2DEncoder(minilm_path, **options)
    _assert_same(remote.encode_documents(TEXTS), local.encode_documents(TEXTS))
    _assert_same(remote.encode_queries(TEXTS), local.encode_queries(TEXTS))
    assert {**remote.fingerprint, "model": None} == {**local.fingerprint, "model": None}
    assert remote.space_id == local.space_id  # same vectors, same space: a collection may be filled by either


def test_the_langchain_adapter_goes_remote_and_never_keeps_the_key(url: str, minilm_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    embeddings = Matryoshka2DEmbeddings(model=MODEL, base_url=url, api_key=KEY, num_layers=3, dimensions=64, query_prompt="query: ")
    local = Matryoshka2DEncoder(minilm_path, num_layers=3, dimensions=64, query_prompt="query: ")
    _assert_same(embeddings.embed_documents(TEXTS), local.encode_documents(TEXTS))
    _assert_same([embeddings.embed_query(TEXTS[0])], local.encode_queries(TEXTS[:1]))
    assert embeddings.api_key is None and KEY not in repr(embeddings) and KEY not in embeddings.model_dump_json()
    pickled = pickle.dumps(embeddings)
    assert KEY.encode() not in pickled
    monkeypatch.setenv("MXBAI_API_KEY", KEY)  # what the unpickled copy reads, as the SDK does
    _assert_same(pickle.loads(pickled).embed_documents(TEXTS[:1]), local.encode_documents(TEXTS[:1]))


async def test_the_llama_index_adapter_goes_remote(url: str, minilm_path: Path) -> None:
    embedding = Matryoshka2DEmbedding(model_name=MODEL, base_url=url, api_key=KEY, dimensions=128, embed_batch_size=2)
    local = Matryoshka2DEncoder(minilm_path, dimensions=128)
    _assert_same(embedding.get_text_embedding_batch(TEXTS), local.encode_documents(TEXTS))  # two requests of at most 2 texts
    _assert_same([await embedding.aget_query_embedding(TEXTS[1])], local.encode_queries(TEXTS[1:2]))


def test_chroma_stores_the_endpoint_not_the_key_and_refuses_a_mixed_space(
    url: str, local: Matryoshka2DEncoder, minilm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = chromadb.EphemeralClient()
    function = Matryoshka2DEmbeddingFunction(MODEL, base_url=url, api_key=KEY, num_layers=3)
    collection = open_collection(function, "remote_docs", client=client)
    collection.add(ids=["a", "b"], documents=TEXTS[:2])
    config = function.get_config()
    assert (config["base_url"], config["model"], config["num_layers"], config["dimensions"]) == (url, MODEL, 3, 384)
    assert KEY not in repr(config) and KEY.encode() not in pickle.dumps(function)
    with pytest.raises(EmbeddingSpaceMismatch, match="num_layers"):
        open_collection(Matryoshka2DEmbeddingFunction(MODEL, base_url=url, api_key=KEY, num_layers=2), "remote_docs", client=client)
    with pytest.raises(EmbeddingSpaceMismatch, match="num_layers"):
        open_collection(local, "remote_docs", client=client)  # the full-depth local space
    monkeypatch.setenv("MXBAI_API_KEY", KEY)
    rebuilt = stored_embedding_function("remote_docs", client=client)
    _assert_same(rebuilt.embed_query(TEXTS[:1]), Matryoshka2DEncoder(minilm_path, num_layers=3).encode_queries(TEXTS[:1]))


def test_an_endpoint_that_keeps_failing_is_retried_then_a_clear_error() -> None:
    calls = []
    failing = FastAPI()

    @failing.post("/v1/embeddings")
    async def busy() -> JSONResponse:
        calls.append(1)
        return JSONResponse({"error": {"message": "overloaded"}}, status_code=503, headers={"Retry-After": "0"})

    with serving_in_background(failing) as base:
        with pytest.raises(RemoteEmbeddingError, match=r"answered 503 for model 'minilm'"):
            RemoteEncoder(base, MODEL, api_key=KEY, max_retries=2, dimensions=8).encode_documents(["x"])
    assert len(calls) == 3  # the first try and two retries


def test_a_wrong_key_and_no_key_are_clear_errors(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RemoteEmbeddingError, match="401"):
        RemoteEncoder(url, MODEL, api_key="wrong", dimensions=8).encode_documents(["x"])
    monkeypatch.delenv("MXBAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="api_key.*MXBAI_API_KEY"):
        RemoteEncoder(url, MODEL).encode_documents(["x"])


def test_options_an_endpoint_cannot_honour_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="pooling, device cannot be set for a remote endpoint"):
        RemoteEncoder(url, MODEL, pooling="cls", device="cpu")
    with pytest.raises(ValueError, match="pooling"):
        Matryoshka2DEmbeddings(model=MODEL, base_url=url, api_key=KEY, pooling="cls")


def test_an_endpoint_that_lists_no_models_is_named_by_its_model() -> None:
    other = FastAPI()

    @other.post("/v1/embeddings")
    async def embed() -> dict:
        return {"model": MODEL, "data": [{"embedding": [0.6, 0.8], "index": 0}], "usage": {"prompt_tokens": 1, "total_tokens": 1},
                "normalized": True, "encoding_format": "float"}

    with serving_in_background(other) as base:
        remote = RemoteEncoder(base, MODEL, api_key=KEY)
        assert remote.fingerprint["weights"] == "remote:minilm" and remote.dimensions == 2  # /v1/models is a 404 here
