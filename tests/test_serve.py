"""`mm2d serve`: the real server on loopback, called by the official SDKs and by raw HTTP for what no SDK sends."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import langchain_openai
import mixedbread
import numpy as np
import openai
import pytest
from llama_index.embeddings.openai import OpenAIEmbedding
from prometheus_client.parser import text_string_to_metric_families

from mm2d_integrations.cli import main
from mm2d_integrations.core.encoder import Matryoshka2DEncoder
from mm2d_integrations.serving.server import ServerLimits, check_bind, create_app, serving_in_background

MODEL = "minilm"
TEXTS = ["A cat sits on the mat.", "Stock markets fell sharply on Monday.", "The recipe needs two eggs and flour."]


def _cosines(first: Any, second: Any) -> np.ndarray:
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    return np.sum(first * second, axis=1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))


@pytest.fixture(scope="module")
def encoder(minilm_path: Path) -> Matryoshka2DEncoder:
    return Matryoshka2DEncoder(minilm_path, num_layers=4)


@pytest.fixture(scope="module")
def url(encoder: Matryoshka2DEncoder) -> Iterator[str]:
    with serving_in_background(create_app(encoder, model_name=MODEL, limits=ServerLimits(max_texts_per_request=8, max_chars_per_text=200))) as base:
        yield base


@pytest.mark.parametrize(("num_layers", "dimensions"), [(4, 384), (4, 64), (2, 128), (1, 32)])
def test_the_mixedbread_sdk_gets_the_local_vectors_at_each_depth_and_width(
    url: str, minilm_path: Path, num_layers: int, dimensions: int
) -> None:
    client = mixedbread.Mixedbread(base_url=url, api_key="unused", max_retries=0)
    response = client.embed(model=MODEL, input=TEXTS, dimensions=dimensions, extra_body={"num_layers": num_layers})
    local = Matryoshka2DEncoder(minilm_path, num_layers=num_layers, dimensions=dimensions).encode_documents(TEXTS)
    assert (response.model, response.dimensions, response.normalized) == (MODEL, dimensions, True)
    assert [item.index for item in response.data] == [0, 1, 2]
    assert _cosines([item.embedding for item in response.data], local).min() >= 0.99999


def test_a_prompt_is_put_before_each_text_and_base64_decodes_to_the_floats(url: str, encoder: Matryoshka2DEncoder) -> None:
    client = mixedbread.Mixedbread(base_url=url, api_key="unused", max_retries=0)
    response = client.embed(model=MODEL, input="a cat", prompt="query: ", encoding_format=["float", "base64"])
    both = response.data[0].embedding
    decoded = np.frombuffer(base64.b64decode(both.base64), "<f4")
    np.testing.assert_array_equal(decoded, np.asarray(both.float, np.float32))
    local = encoder.encode(["a cat"], prompt="query: ")
    assert _cosines([both.float], local)[0] >= 0.99999
    assert _cosines([both.float], encoder.encode_documents(["a cat"]))[0] < 0.999  # the prompt changed the vector


def test_the_openai_sdk_gets_the_local_vectors_in_base64_by_default(url: str, encoder: Matryoshka2DEncoder) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    response = client.embeddings.create(model=MODEL, input=TEXTS, dimensions=96)
    assert _cosines([item.embedding for item in response.data], encoder.with_dimensions(96).encode_documents(TEXTS)).min() >= 0.99999
    single = client.embeddings.create(model=MODEL, input="a cat", encoding_format="float")
    assert len(single.data) == 1 and len(single.data[0].embedding) == 384
    tokens = sum(encoder.token_count(TEXTS))  # the model's own tokens of each text (no prompt here)
    assert tokens > len(TEXTS) and response.usage.prompt_tokens == response.usage.total_tokens == tokens


def test_langchain_and_llama_index_openai_classes_work_unchanged(url: str, encoder: Matryoshka2DEncoder) -> None:
    expected = encoder.with_dimensions(128).encode_documents(TEXTS)
    lc = langchain_openai.OpenAIEmbeddings(
        model=MODEL, base_url=url + "/v1", api_key="unused", dimensions=128, check_embedding_ctx_length=False, max_retries=0
    )
    assert _cosines(lc.embed_documents(TEXTS), expected).min() >= 0.99999
    assert _cosines([lc.embed_query(TEXTS[0])], expected[:1])[0] >= 0.99999
    li = OpenAIEmbedding(model_name=MODEL, api_base=url + "/v1", api_key="unused", dimensions=128, max_retries=0)
    assert _cosines(li.get_text_embedding_batch(TEXTS), expected).min() >= 0.99999


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"model": MODEL, "input": [1, 2]}, 422, "input"),
        ({"model": MODEL, "input": "x", "dimensions": "64"}, 422, "dimensions"),
        ({"model": MODEL, "input": "x", "dimensions": 385}, 422, "dimensions must be an int in [1, 384]"),
        ({"model": MODEL, "input": "x", "dimensions": 0}, 422, "dimensions must be an int in [1, 384]"),
        ({"model": MODEL, "input": "x", "num_layers": 5}, 422, "num_layers must be an int in [1, 4]"),
        ({"model": MODEL, "input": "x", "encoding_format": "int8"}, 422, "encoding_format"),
        ({"model": MODEL, "input": []}, 422, "at least one text"),
        ({"model": MODEL, "input": ["x"] * 9}, 413, "max_texts_per_request=8"),
        ({"model": MODEL, "input": ["x" * 201]}, 413, "max_chars_per_text=200"),
        ({"model": "other", "input": "x"}, 404, "'minilm'"),
        ({"input": "x"}, 422, "model"),
    ],
)
def test_bad_requests_get_a_4xx_that_says_why_and_the_server_keeps_serving(url: str, body: dict, status: int, names: str) -> None:
    response = httpx.post(url + "/v1/embeddings", json=body)
    assert response.status_code == status
    assert names in response.json()["error"]["message"]
    assert httpx.post(url + "/v1/embeddings", json={"model": MODEL, "input": "still here"}).status_code == 200


def test_malformed_json_gets_a_4xx_and_the_server_keeps_serving(url: str) -> None:
    response = httpx.post(url + "/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "invalid request" in response.json()["error"]["message"]
    with pytest.raises(mixedbread.UnprocessableEntityError, match="dimensions"):
        mixedbread.Mixedbread(base_url=url, api_key="unused", max_retries=0).embed(model=MODEL, input="x", dimensions=999)
    assert httpx.post(url + "/v1/embeddings", json={"model": MODEL, "input": "still here"}).status_code == 200


def test_health_and_prometheus_metrics(url: str) -> None:
    assert httpx.get(url + "/health").json() == {"status": "ok", "model": MODEL, "num_layers": 4, "dimensions": 384}
    httpx.post(url + "/v1/embeddings", json={"model": MODEL, "input": ["a", "b"]})
    families = {family.name: family for family in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
    assert {"mm2d_requests", "mm2d_batch_texts", "mm2d_request_seconds", "mm2d_queue_depth", "mm2d_texts"} <= set(families)
    served = {sample.labels.get("status"): sample.value for sample in families["mm2d_requests"].samples if sample.name.endswith("_total")}
    assert served["200"] >= 1


def test_an_api_key_is_required_and_checked(encoder: Matryoshka2DEncoder) -> None:
    with serving_in_background(create_app(encoder, api_key="s3cret", model_name=MODEL)) as base:
        assert httpx.post(base + "/v1/embeddings", json={"model": MODEL, "input": "x"}).status_code == 401
        wrong = httpx.post(base + "/v1/embeddings", json={"model": MODEL, "input": "x"}, headers={"Authorization": "Bearer s3cres"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]["message"]
        assert httpx.get(base + "/metrics").status_code == 401
        assert httpx.get(base + "/health").status_code == 200
        with pytest.raises(mixedbread.AuthenticationError):
            mixedbread.Mixedbread(base_url=base, api_key="wrong", max_retries=0).embed(model=MODEL, input="x")
        assert len(mixedbread.Mixedbread(base_url=base, api_key="s3cret").embed(model=MODEL, input="x").data) == 1


def test_binding_beyond_loopback_needs_an_api_key(capsys: pytest.CaptureFixture[str]) -> None:
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "key")
    for host in ("0.0.0.0", "192.168.1.7", "example.org"):
        with pytest.raises(ValueError, match="api_key"):
            check_bind(host, None)
    assert main(["serve", "--host", "0.0.0.0", "--port", "9"]) == 2  # refused before any model loads or port opens
    assert "api_key" in capsys.readouterr().err


class _Gated:
    """The encoder, whose forward passes wait until the test opens the gate: requests pile up meanwhile."""

    def __init__(self, encoder: Matryoshka2DEncoder) -> None:
        self._encoder, self.started, self.gate = encoder, threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def encode_layerwise(self, *args: Any, **kwargs: Any) -> dict[int, np.ndarray]:
        self.started.set()
        assert self.gate.wait(timeout=60)
        return self._encoder.encode_layerwise(*args, **kwargs)


def _wait_for_queue(base: str, depth: int) -> None:
    for _ in range(500):
        families = {family.name: family for family in text_string_to_metric_families(httpx.get(base + "/metrics").text)}
        if families["mm2d_queue_depth"].samples[0].value >= depth:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"the queue never held {depth} requests")


def test_queued_requests_are_encoded_together_and_a_full_queue_answers_503(encoder: Matryoshka2DEncoder) -> None:
    gated = _Gated(encoder)
    app = create_app(gated, model_name=MODEL, limits=ServerLimits(max_queue=3))  # type: ignore[arg-type]
    with serving_in_background(app) as base, ThreadPoolExecutor(4) as pool:
        post = lambda texts: httpx.post(base + "/v1/embeddings", json={"model": MODEL, "input": texts}, timeout=60)  # noqa: E731
        first = pool.submit(post, ["first"])
        assert gated.started.wait(timeout=30)  # the worker is busy with the first request
        queued = [pool.submit(post, [f"text {index}", "another"]) for index in range(3)]
        _wait_for_queue(base, 3)
        refused = post(["one too many"])
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "max_queue" in refused.json()["error"]["message"]
        gated.gate.set()
        assert [future.result().status_code for future in [first, *queued]] == [200] * 4
        families = {family.name: family for family in text_string_to_metric_families(httpx.get(base + "/metrics").text)}
    batches = {sample.name: sample.value for sample in families["mm2d_batch_texts"].samples if not sample.labels}
    assert (batches["mm2d_batch_texts_count"], batches["mm2d_batch_texts_sum"]) == (2, 7)  # the three queued ones: one batch of 6 texts
    vectors = [item["embedding"] for item in queued[1].result().json()["data"]]
    assert _cosines(vectors, encoder.encode_documents(["text 1", "another"])).min() >= 0.99999


def test_mm2d_serve_serves_the_cut_it_was_given(minilm_path: Path) -> None:
    """The command itself, in a subprocess: encoder flags as for the other commands, key from the environment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "mm2d_integrations.cli", "serve", "--model", str(minilm_path), "--layers", "2", "--dims", "64",
               "--served-model-name", MODEL, "--port", str(port)]
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "MM2D_API_KEY": "k"}
    server = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "/health").status_code == 200:
                    break
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            threading.Event().wait(0.1)
        assert httpx.get(base + "/health").json() == {"status": "ok", "model": MODEL, "num_layers": 2, "dimensions": 64}
        response = mixedbread.Mixedbread(base_url=base, api_key="k", max_retries=0).embed(model=MODEL, input=TEXTS)
        local = Matryoshka2DEncoder(minilm_path, num_layers=2, dimensions=64).encode_documents(TEXTS)
        assert _cosines([item.embedding for item in response.data], local).min() >= 0.99999
    finally:
        server.terminate()  # uvicorn shuts down on SIGTERM
        assert server.wait(timeout=30) is not None
