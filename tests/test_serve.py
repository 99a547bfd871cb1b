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
        ({"model": MODEL, "input": ["x" * 150], "prompt": "p" * 51}, 413, "with its prompt of 51 exceeds max_chars_per_text=200"),
        ({"model": MODEL, "input": "x", "encoding_format": []}, 422, "encoding_format"),
        ({"model": "m" * 1000, "input": "x"}, 422, "model: String should have at most 512 characters"),
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
    assert httpx.get(url + "/health").json() == {"status": "ok", "num_layers": 4, "dimensions": 384}
    httpx.post(url + "/v1/embeddings", json={"model": MODEL, "input": ["a", "b"]})
    families = {family.name: family for family in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
    expected = {"mm2d_requests", "mm2d_batch_texts", "mm2d_request_seconds", "mm2d_queue_depth", "mm2d_texts", "mm2d_disconnects"}
    assert expected | {"process_resident_memory_bytes"} <= set(families)
    assert families["process_resident_memory_bytes"].samples[0].value > 50e6  # the model's weights at least
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
    """The real encoder, whose forward passes wait until the test opens the gate (requests pile up
    meanwhile); it records the texts of each pass, and fails a pass that holds a text containing `fails_on`
    (as a text that a misconfigured model cannot take does)."""

    def __init__(self, encoder: Matryoshka2DEncoder, fails_on: str | None = None) -> None:
        self._encoder, self.started, self.gate, self.fails_on = encoder, threading.Event(), threading.Event(), fails_on
        self.passes: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def encode_layerwise(self, texts: list[str], *args: Any, **kwargs: Any) -> dict[int, np.ndarray]:
        self.started.set()
        assert self.gate.wait(timeout=60)
        self.passes.append(list(texts))
        if self.fails_on is not None and any(self.fails_on in text for text in texts):
            raise RuntimeError("The expanded size of the tensor (602) must match the existing size (512)")
        return self._encoder.encode_layerwise(texts, *args, **kwargs)


def _metric(base: str, name: str, labels: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> float:
    """A sample's value from /metrics (0 where it is not there yet)."""
    for family in text_string_to_metric_families(httpx.get(base + "/metrics", headers=headers).text):
        for sample in family.samples:
            if sample.name == name and (labels is None or sample.labels == labels):
                return sample.value
    return 0.0


def _wait_for(base: str, name: str, value: float) -> None:
    for _ in range(500):
        if _metric(base, name) >= value:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{name} never reached {value}")


def _wait_for_queue(base: str, depth: int) -> None:
    _wait_for(base, "mm2d_queue_depth", depth)


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
        assert httpx.get(base + "/health").json() == {"status": "ok", "num_layers": 2, "dimensions": 64}
        response = mixedbread.Mixedbread(base_url=base, api_key="k", max_retries=0).embed(model=MODEL, input=TEXTS)
        local = Matryoshka2DEncoder(minilm_path, num_layers=2, dimensions=64).encode_documents(TEXTS)
        assert _cosines([item.embedding for item in response.data], local).min() >= 0.99999
    finally:
        server.terminate()  # uvicorn shuts down on SIGTERM
        assert server.wait(timeout=30) is not None


def _raw(base: str, request: bytes, timeout: float = 10) -> bytes:
    """What the server answers to `request` sent as it is (no client would send it), read until it closes
    or `timeout` passes; the socket raises TimeoutError where the server is still waiting for the body."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        return answer


def _post_head(length: int | None, key: str | None = None) -> bytes:
    """The head of a POST to /v1/embeddings announcing `length` bytes (None: chunked)."""
    lines = ["POST /v1/embeddings HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_the_key_is_checked_before_the_body_is_read_and_guards_the_docs(encoder: Matryoshka2DEncoder, minilm_path: Path) -> None:
    with serving_in_background(create_app(encoder, api_key="s3cret")) as base:
        # 300 MB announced, 1 byte sent: the 401 comes without waiting for the rest
        assert _raw(base, _post_head(300_000_000) + b"{").startswith(b"HTTP/1.1 401")
        malformed = httpx.post(base + "/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
        assert malformed.status_code == 401 and "API key" in malformed.json()["error"]["message"]
        for path in ("/docs", "/openapi.json", "/redoc", "/v1/models", "/no/such/path"):
            assert httpx.get(base + path).status_code == 401, path
            assert httpx.get(base + path, headers={"Authorization": "Bearer s3cret"}).status_code == (404 if "such" in path else 200), path
        health = httpx.get(base + "/health")  # open, and says nothing of where the model lies
        assert health.status_code == 200 and str(minilm_path) not in health.text and "model" not in health.json()
        assert _metric(base, "mm2d_requests_total", {"status": "401"}, {"Authorization": "Bearer s3cret"}) == 7


def test_a_body_over_max_body_bytes_gets_413_before_it_is_parsed(url: str) -> None:
    limit = ServerLimits(max_texts_per_request=8, max_chars_per_text=200).max_body_bytes
    assert limit == 9 * 200 * 6 + 65536  # what the text limits allow, each character as a JSON escape
    announced = _raw(url, _post_head(300_000_000) + b"{")  # announced: refused before a byte more is read
    assert announced.startswith(b"HTTP/1.1 413") and f"max_body_bytes={limit}".encode() in announced
    chunk = b"x" * 16384  # streamed without a length: refused once the bytes pass the limit, before the body ends
    streamed = _raw(url, _post_head(None) + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(limit // len(chunk) + 1)))
    assert streamed.startswith(b"HTTP/1.1 413") and b"max_body_bytes" in streamed
    assert httpx.post(url + "/v1/embeddings", json={"model": MODEL, "input": "still here"}).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "names"),
    [
        ("POST", "/v1/embeddings", b'{"model": "minilm", "input": "caf\xe9"}', 400, "UnicodeDecodeError"),
        ("POST", "/v1/embeddings", b"[" * 30_000 + b"]" * 30_000, 400, "RecursionError"),
        ("GET", "/v1/embeddings", b"", 405, "Method Not Allowed"),
        ("GET", "/v2/nothing", b"", 404, "Not Found"),
    ],
)
def test_what_fastapi_refuses_gets_the_api_error_shape_and_is_counted(
    url: str, method: str, path: str, content: bytes, status: int, names: str
) -> None:
    before = _metric(url, "mm2d_requests_total", {"status": str(status)})
    response = httpx.request(method, url + path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status and names in response.json()["error"]["message"]
    assert _metric(url, "mm2d_requests_total", {"status": str(status)}) == before + 1
    assert httpx.post(url + "/v1/embeddings", json={"model": MODEL, "input": "still here"}).status_code == 200


def test_the_work_of_a_client_that_hung_up_never_reaches_the_model(encoder: Matryoshka2DEncoder) -> None:
    gated = _Gated(encoder)
    with serving_in_background(create_app(gated, model_name=MODEL)) as base, ThreadPoolExecutor(1) as pool:  # type: ignore[arg-type]
        first = pool.submit(httpx.post, base + "/v1/embeddings", json={"model": MODEL, "input": ["first"]}, timeout=60)
        assert gated.started.wait(timeout=30)  # the worker is busy with the first request
        with pytest.raises(httpx.ReadTimeout):  # this client gives up after 0.5 s and closes its connection
            httpx.post(base + "/v1/embeddings", json={"model": MODEL, "input": ["gone 1", "gone 2"]}, timeout=0.5)
        _wait_for(base, "mm2d_disconnects_total", 1)
        gated.gate.set()
        assert first.result().status_code == 200
        assert httpx.post(base + "/v1/embeddings", json={"model": MODEL, "input": "after"}).status_code == 200
        assert gated.passes == [["first"], ["after"]]
        assert (_metric(base, "mm2d_texts_total"), _metric(base, "mm2d_disconnects_total")) == (2, 1)
        assert _metric(base, "mm2d_requests_total", {"status": "200"}) == 2 + 3  # the two answered, and three /metrics reads


def test_a_large_request_is_split_into_batches_that_interleave_with_others(minilm_path: Path) -> None:
    """Batches of at most 512 tokens (the encoder's max_batch_tokens): two long texts each; a one-text
    request that comes while the first batch runs is in the second, before the long request ends."""
    gated = _Gated(Matryoshka2DEncoder(minilm_path, num_layers=4, max_batch_tokens=512))
    long_texts = [f"{index} " + "many words in a long text " * 20 for index in range(6)]  # 530 bytes: max_length=256 tokens each
    with serving_in_background(create_app(gated, model_name=MODEL)) as base, ThreadPoolExecutor(2) as pool:  # type: ignore[arg-type]
        post = lambda texts: httpx.post(base + "/v1/embeddings", json={"model": MODEL, "input": texts}, timeout=60)  # noqa: E731
        large = pool.submit(post, long_texts)
        assert gated.started.wait(timeout=30)
        small = pool.submit(post, ["a short one"])
        _wait_for_queue(base, 2)  # the rest of the large request, and the small one
        gated.gate.set()
        assert small.result().status_code == large.result().status_code == 200
    assert gated.passes == [long_texts[0:2], [long_texts[2], "a short one"], long_texts[3:5], long_texts[5:6]]
    vectors = [item["embedding"] for item in large.result().json()["data"]]
    assert _cosines(vectors, gated._encoder.encode_documents(long_texts)).min() >= 0.99999


def test_a_text_that_fails_fails_only_its_own_request_with_a_json_error(encoder: Matryoshka2DEncoder) -> None:
    gated = _Gated(encoder, fails_on="POISON")
    with serving_in_background(create_app(gated, model_name=MODEL)) as base, ThreadPoolExecutor(3) as pool:  # type: ignore[arg-type]
        post = lambda texts: httpx.post(base + "/v1/embeddings", json={"model": MODEL, "input": texts}, timeout=60)  # noqa: E731
        first = pool.submit(post, ["first"])
        assert gated.started.wait(timeout=30)
        poisoned, healthy = pool.submit(post, ["fine", "a POISON text"]), pool.submit(post, ["a cat", "a dog"])
        _wait_for_queue(base, 2)
        gated.gate.set()
        assert first.result().status_code == 200
        failed = poisoned.result()
        assert failed.status_code == 500 and "RuntimeError: The expanded size" in failed.json()["error"]["message"]
        assert healthy.result().status_code == 200
        vectors = [item["embedding"] for item in healthy.result().json()["data"]]
        assert _cosines(vectors, encoder.encode_documents(["a cat", "a dog"])).min() >= 0.99999
        assert post(["still here"]).status_code == 200
        assert _metric(base, "mm2d_requests_total", {"status": "500"}) == 1
