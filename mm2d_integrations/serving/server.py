"""An HTTP embedding server that speaks the embeddings API of the `mixedbread` and `openai` SDKs.

`POST /v1/embeddings` (also `/embeddings`, where an OpenAI client's base URL lacks `/v1`) takes
`model`, `input` (a string or a list), `dimensions`, `prompt`, `normalized`, `encoding_format`
(float, base64, or a list of them) and our extension `num_layers` (a depth within the loaded one),
and answers in a shape both SDKs parse. Requests from many clients are encoded together: one
worker takes a batch from whatever is queued (waiting at most `max_wait_ms` for more), one text of
each request in turn, so a large request is split into batches that interleave with the others, and
runs one forward pass over it at every requested depth.

`GET /health`; `GET /metrics` (Prometheus). With an API key, everything but `/health` needs
`Authorization: Bearer KEY`, as both SDKs send it; the key and the body's size are checked before
the body is read.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import hmac
import ipaddress
import logging
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np

from mm2d_integrations.core.encoder import Matryoshka2DEncoder, truncate_dimensions
from mm2d_integrations.core.validation import check_int_in_range, install_hint

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
    from pydantic_core import to_json
    from starlette.exceptions import HTTPException
except ImportError as error:
    raise ImportError(install_hint("fastapi", "serve")) from error

__all__ = ["EmbeddingRequest", "ServerLimits", "check_bind", "create_app", "is_loopback", "serve", "serving_in_background"]

_FORMATS = ("float", "base64")
_OPEN_PATHS = frozenset({"/health"})  # answered without the key
_UNREAD = {"Connection": "close"}  # a refusal before the body is read: the connection ends, the rest of the body is never read
_LOGGER = logging.getLogger(__name__)
_LIBC = ctypes.CDLL(None) if sys.platform == "linux" and hasattr(ctypes.CDLL(None), "malloc_trim") else None  # glibc's, not musl's

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask and how much may wait: beyond them the server refuses rather than grows."""

    max_texts_per_request: int = 256
    max_chars_per_text: int = 32_768  # the request's `prompt` included: it is put before every text
    max_queue: int = 256  # requests waiting for the encoder; more get 503 with Retry-After
    max_batch_texts: int = 256  # texts encoded together at most (the encoder splits them by its batch_size)
    max_wait_ms: float = 2.0  # how long a batch waits for more requests once one is there
    # Bytes of a request body; None: what the text limits allow, each character as a 6-byte JSON escape (\u00e9), and 64 KiB more
    max_body_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_texts_per_request", "max_chars_per_text", "max_queue", "max_batch_texts"):
            check_int_in_range(name, getattr(self, name), 1, 1 << 30)
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ValueError(f"max_wait_ms must be in [0, 10000], got {self.max_wait_ms!r}")
        if self.max_body_bytes is None:
            object.__setattr__(self, "max_body_bytes", (self.max_texts_per_request + 1) * self.max_chars_per_text * 6 + (64 << 10))
        check_int_in_range("max_body_bytes", self.max_body_bytes, 1, 1 << 40)


class EmbeddingRequest(BaseModel):
    """What the mixedbread SDK's `embed` and the openai SDK's `embeddings.create` send (strictly typed:
    a number where a text belongs is refused, not converted)."""

    model_config = ConfigDict(extra="ignore")  # openai's `user`, and fields of later SDK versions

    model: Annotated[StrictStr, Field(max_length=512)]
    input: StrictStr | list[StrictStr]
    dimensions: StrictInt | None = None
    prompt: StrictStr | None = None  # None: the model's document prompt
    normalized: StrictBool = True
    encoding_format: Literal["float", "base64"] | Annotated[list[Literal["float", "base64"]], Field(min_length=1, max_length=2)] = "float"
    num_layers: StrictInt | None = Field(default=None, description="our extension: transformer layers, at most the server's")


class _ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


class _ClientGone(Exception):
    """The client hung up before its answer was ready: nothing is sent, the request counts as a disconnect."""


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in the shape both SDKs read their message from (`error.message`), and as `detail`."""
    return JSONResponse({"error": {"message": message, "type": kind}, "detail": message}, status_code=status, headers=headers)


@dataclass(eq=False)
class _Job:
    """One request's texts, handed to the model a batch at a time; its vectors gather in `parts`."""

    texts: list[str]  # prompt included
    costs: list[int]  # each text's tokens at most (what it takes of the encoder's max_batch_tokens)
    num_layers: int
    dimensions: int
    normalized: bool
    done: asyncio.Future = field(repr=False)
    scheduled: int = 0  # texts handed to the model so far
    parts: list[np.ndarray] = field(default_factory=list, repr=False)
    tokens: int = 0
    admitted: float = field(default_factory=time.monotonic)


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()  # one per app: several servers may run in one process
        self.requests = Counter("mm2d_requests", "HTTP requests answered, by status (every path)", ["status"], registry=self.registry)
        self.disconnects = Counter("mm2d_disconnects", "requests whose client hung up before the answer", registry=self.registry)
        self.texts = Counter("mm2d_texts", "texts embedded", registry=self.registry)
        self.batch_texts = Histogram(
            "mm2d_batch_texts", "texts per forward batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=self.registry
        )
        self.latency = Histogram("mm2d_request_seconds", "embedding request latency", registry=self.registry)
        self.queue_depth = Gauge("mm2d_queue_depth", "requests waiting for the encoder", registry=self.registry)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU seconds, open files


class _Batcher:
    """The requests waiting for the model, and the one worker that encodes a batch of their texts at a time.

    A batch takes one text of each waiting request in turn, round after round, until `max_batch_texts`
    or the encoder's `max_batch_tokens` (a text counted as its UTF-8 bytes + 2, more than its tokens,
    at most `max_length`: known without tokenising); the request that did not fit goes first next time. So a large request is
    split into batches that interleave with the others, and no request waits behind another for more
    than a batch. A request whose client hung up is dropped before its next text reaches the model.
    """

    def __init__(self, encoder: Matryoshka2DEncoder, limits: ServerLimits, metrics: _Metrics) -> None:
        self.encoder, self.limits, self.metrics = encoder, limits, metrics
        self.waiting: deque[_Job] = deque()  # jobs with texts not yet handed to the model, in turn order
        self._wake = asyncio.Event()
        self._trimmed = True  # whether the heap was trimmed since the last batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mm2d-serve")  # one forward pass at a time

    def submit(self, job: _Job) -> None:
        self._drop_gone()
        if len(self.waiting) >= self.limits.max_queue:
            raise _ApiError(
                503, f"the server is busy: {self.limits.max_queue} requests are waiting (max_queue); retry shortly",
                "overloaded", {"Retry-After": "1"},
            )
        self.waiting.append(job)
        self._wake.set()
        self.metrics.queue_depth.set(len(self.waiting))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._gather()
            batch = self._take()
            self.metrics.queue_depth.set(len(self.waiting))
            if not batch:
                continue
            self.metrics.batch_texts.observe(sum(end - start for _, start, end in batch))
            self._trimmed = False
            outcomes = await loop.run_in_executor(self._executor, self._encode, batch)
            for (job, _, end), outcome in zip(batch, outcomes):
                if job.done.done():  # its client hung up meanwhile
                    continue
                if isinstance(outcome, Exception):
                    _LOGGER.error("encoding a request's texts failed", exc_info=outcome)
                    job.done.set_exception(_ApiError(500, f"encoding these texts failed: {type(outcome).__name__}: {outcome}", "encoding_error"))
                    continue
                vectors, tokens = outcome
                job.parts.append(vectors)
                job.tokens += tokens
                if end == len(job.texts):
                    job.done.set_result((np.concatenate(job.parts) if len(job.parts) > 1 else job.parts[0], job.tokens))

    def _drop_gone(self) -> bool:
        """Forget the jobs already answered (their client hung up, or a text failed); whether any wait."""
        if any(job.done.done() for job in self.waiting):
            self.waiting = deque(job for job in self.waiting if not job.done.done())
        return bool(self.waiting)

    async def _gather(self) -> None:
        """Until a job waits, and then until `max_wait_ms` after the oldest one came or `max_batch_texts` wait.
        Idle for a second after work, the C heap's free pages go back to the system."""
        while not self._drop_gone():
            self._wake.clear()
            if self._trimmed:
                await self._wake.wait()
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except asyncio.TimeoutError:
                await asyncio.get_running_loop().run_in_executor(self._executor, _release_free_memory)
                self._trimmed = True
        deadline = min(job.admitted for job in self.waiting) + self.limits.max_wait_ms / 1000
        while sum(len(job.texts) - job.scheduled for job in self.waiting) < self.limits.max_batch_texts:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[tuple[_Job, int, int]]:
        """The next batch: (job, first text, end) slices, one text of each waiting job in turn."""
        self._drop_gone()
        taken: dict[_Job, int] = {}
        texts = tokens = 0
        while self.waiting:
            job = self.waiting[0]
            index = job.scheduled + taken.get(job, 0)
            cost = job.costs[index]
            if texts == self.limits.max_batch_texts or (texts and tokens + cost > self.encoder.max_batch_tokens):
                break  # this job goes first next time
            taken[job] = taken.get(job, 0) + 1
            texts, tokens = texts + 1, tokens + cost
            if index + 1 == len(job.texts):
                self.waiting.popleft()  # every text of it handed out
            else:
                self.waiting.rotate(-1)
        batch = []
        for job, count in taken.items():
            batch.append((job, job.scheduled, job.scheduled + count))
            job.scheduled += count
        return batch

    def _encode(self, batch: list[tuple[_Job, int, int]]) -> list[tuple[np.ndarray, int] | Exception]:
        """Each slice's vectors and tokens, or the error that its texts raised: where the batch fails,
        each job's slice is encoded alone, so that a text that fails fails only its own request."""
        try:
            return list(self._encode_together(batch))
        except Exception as error:
            if len(batch) == 1:
                return [error]
        outcomes: list[tuple[np.ndarray, int] | Exception] = []
        for part in batch:
            try:
                outcomes.extend(self._encode_together([part]))
            except Exception as error:
                outcomes.append(error)
        return outcomes

    def _encode_together(self, batch: list[tuple[_Job, int, int]]) -> list[tuple[np.ndarray, int]]:
        """One pass over the slices' texts at every depth asked; each slice cut to its job's depth and
        width, with the tokens its texts hold (the answer's `usage`)."""
        texts = [text for job, start, end in batch for text in job.texts[start:end]]
        by_depth = self.encoder.encode_layerwise(texts, {job.num_layers for job, _, _ in batch})
        tokens = self.encoder.token_count(texts)
        results, offset = [], 0
        for job, start, end in batch:
            following = offset + end - start
            vectors = truncate_dimensions(by_depth[job.num_layers][offset:following], job.dimensions, job.normalized)
            results.append((vectors, sum(tokens[offset:following])))
            offset = following
        self.metrics.texts.inc(len(texts))
        return results


def _release_free_memory() -> None:
    """Hand the C heap's free pages back to the system: glibc keeps them otherwise, and the RSS of a
    server that once parsed and encoded a large request would stay where that request left it."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class _Gate:
    """Pure ASGI in front of the app: it refuses before the app reads. The key is checked from the
    headers, then the body's size from Content-Length and from the bytes as they stream in (413), so
    that a request nobody may make, or too large a one, costs neither memory nor parsing. It counts
    every answer by status, and a client that hung up as a disconnect; an error that escapes the app
    still gets the API's error shape."""

    def __init__(self, app: AsgiApp, *, expected: bytes | None, max_body_bytes: int, metrics: _Metrics) -> None:
        self.app, self.expected, self.max_body_bytes, self.metrics = app, expected, max_body_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def counted(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.metrics.requests.labels(str(message["status"])).inc()
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, counted)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.metrics.disconnects.inc()
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                await self._too_large(size)(scope, receive, counted)
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False
        del chunks

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # http.disconnect, once the client hangs up
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            await self.app(scope, replay, counted)
        except _ClientGone:
            self.metrics.disconnects.inc()
        except Exception as error:
            if started:
                raise
            _LOGGER.exception("a request failed")
            await _error(500, f"internal error: {type(error).__name__}", "server_error")(scope, receive, counted)

    def _refusal(self, scope: Scope) -> Response | None:
        """401 without the key, 413 for a Content-Length over `max_body_bytes`; None: read the body."""
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] not in _OPEN_PATHS:
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                return _error(401, "missing or wrong API key: send Authorization: Bearer <key>", "authentication_error", _UNREAD)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return self._too_large(int(declared))
        return None

    def _too_large(self, size: int) -> Response:
        return _error(
            413, f"a request body of {size} bytes or more exceeds max_body_bytes={self.max_body_bytes}", "request_too_large",
            _UNREAD,
        )


async def _answer_unless_gone(request: Request, done: asyncio.Future) -> Any:
    """`done`'s result; where the client hangs up first, its job is cancelled (the batcher drops what
    of it is not encoded yet) and `_ClientGone` raised."""

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait({done, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not done.done():
            done.cancel()
    if done.cancelled():
        raise _ClientGone
    return done.result()


def _encoded(vector: np.ndarray, formats: Sequence[str]) -> Any:
    values = {
        name: vector.astype("<f4").tobytes() if name == "base64" else vector.tolist() for name in formats
    }
    if "base64" in values:
        values["base64"] = base64.b64encode(values["base64"]).decode("ascii")
    return values[formats[0]] if len(formats) == 1 else values


def create_app(
    encoder: Matryoshka2DEncoder, *, api_key: str | None = None, limits: ServerLimits | None = None, model_name: str | None = None
) -> FastAPI:
    """The server's application over `encoder`: depths up to its `num_layers`, widths up to its `dimensions`.

    `model_name` (default: the encoder's) is what requests must name as `model`.
    """
    if encoder.loaded_model.exit_heads.query_heads:  # a request says nothing of its side: queries would get document heads
        raise ValueError(
            f"model {encoder.model_name!r} has separate query and document exit heads (mm2d adapt sides='per-side'), which "
            "the embeddings API cannot tell apart; serve a model adapted with sides='shared'"
        )
    limits = limits or ServerLimits()
    served = model_name or encoder.model_name
    metrics = _Metrics()
    batcher = _Batcher(encoder, limits, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = asyncio.create_task(batcher.run())
        try:
            yield
        finally:
            worker.cancel()

    app = FastAPI(title="mm2d embedding server", lifespan=lifespan)
    assert limits.max_body_bytes is not None, "ServerLimits fills it in"
    app.add_middleware(
        _Gate, expected=f"Bearer {api_key}".encode() if api_key else None, max_body_bytes=limits.max_body_bytes, metrics=metrics
    )

    @app.exception_handler(_ApiError)
    async def _api_error(request: Request, error: _ApiError) -> JSONResponse:
        return _error(error.status, error.message, error.kind, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc'][1:]) or 'body'}: {item['msg']}" for item in error.errors())
        return _error(422, f"invalid request: {problems}", "invalid_request_error")

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
        """FastAPI's own refusals (a body it cannot parse, an unknown path or method) in the API's shape."""
        cause = error.__cause__
        if error.status_code == 400 and cause is not None:  # not UTF-8, or nested deeper than Python's recursion limit
            message = f"invalid request: the body is not JSON that can be parsed ({type(cause).__name__}: {cause})"
        else:
            message = str(error.detail)
        return _error(error.status_code, message, "invalid_request_error", dict(error.headers or {}))

    def check(body: EmbeddingRequest) -> _Job:
        if body.model != served:
            raise _ApiError(404, f"model {body.model!r} is not served here; this server serves {served!r}", "model_not_found")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise _ApiError(422, "input must hold at least one text", "invalid_request_error")
        if len(texts) > limits.max_texts_per_request:
            raise _ApiError(413, f"{len(texts)} texts exceed max_texts_per_request={limits.max_texts_per_request}", "request_too_large")
        longest = max(len(text) for text in texts) + len(body.prompt or "")
        if longest > limits.max_chars_per_text:
            with_prompt = f" with its prompt of {len(body.prompt)}" if body.prompt else ""
            raise _ApiError(
                413, f"a text of {longest - len(body.prompt or '')} characters{with_prompt} exceeds max_chars_per_text={limits.max_chars_per_text}",
                "request_too_large",
            )
        try:
            num_layers = check_int_in_range("num_layers", encoder.num_layers if body.num_layers is None else body.num_layers, 1, encoder.num_layers)
            dimensions = check_int_in_range("dimensions", encoder.dimensions if body.dimensions is None else body.dimensions, 1, encoder.dimensions)
        except ValueError as error:
            raise _ApiError(422, str(error), "invalid_request_error") from None
        prompt = encoder.document_prompt if body.prompt is None else body.prompt
        prompted = [prompt + text for text in texts]
        # UTF-8 bytes bound the tokens of any tokenizer (each token spans at least one byte), 2 special tokens aside
        costs = [min(len(text.encode("utf-8", "surrogatepass")) + 2, int(encoder.max_length)) for text in prompted]
        return _Job(prompted, costs, num_layers, dimensions, body.normalized, asyncio.get_running_loop().create_future())

    async def embed(request: Request, body: EmbeddingRequest) -> Response:
        started = time.perf_counter()
        job = check(body)
        batcher.submit(job)
        vectors, tokens = await _answer_unless_gone(request, job.done)
        formats = [body.encoding_format] if isinstance(body.encoding_format, str) else list(dict.fromkeys(body.encoding_format))
        metrics.latency.observe(time.perf_counter() - started)
        # Bytes, not a dict: FastAPI would walk every float of every vector through jsonable_encoder, and
        # pydantic-core writes floats 7x faster than the json module (0.023 against 0.173 ms a 384-float vector)
        return Response(to_json({
            "object": "list",
            "model": served,
            "data": [
                {"object": "embedding" if len(formats) == 1 else "embedding_dict", "index": index, "embedding": _encoded(vector, formats)}
                for index, vector in enumerate(vectors)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},  # the model's tokens, prompt included, special tokens not
            "normalized": body.normalized,
            "encoding_format": body.encoding_format,
            "dimensions": job.dimensions,
            "num_layers": job.num_layers,
        }), media_type="application/json")

    app.post("/v1/embeddings")(embed)
    app.post("/embeddings", include_in_schema=False)(embed)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Open to anyone (no key): whether the server answers, and the largest cut it serves; no names, no paths."""
        return {"status": "ok", "num_layers": encoder.num_layers, "dimensions": encoder.dimensions}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """OpenAI's model list, each entry with what a remote client needs to name the embedding space."""
        return {"object": "list", "data": [{"id": served, "object": "model", "owned_by": "mm2d", "mm2d": encoder.fingerprint}]}

    @app.get("/metrics")
    async def prometheus() -> Response:
        batcher.metrics.queue_depth.set(len(batcher.waiting))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """A ValueError where the server would listen beyond this machine without an API key."""
    if not api_key and not is_loopback(host):
        raise ValueError(f"host {host!r} is not a loopback address: give api_key, so that only its holders can embed")


def serve(
    encoder: Matryoshka2DEncoder, *, host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
    limits: ServerLimits | None = None, model_name: str | None = None,
) -> None:
    """Serve `encoder` until interrupted (see `create_app`)."""
    check_bind(host, api_key)
    uvicorn.run(create_app(encoder, api_key=api_key, limits=limits, model_name=model_name), host=host, port=port, log_level="warning")


@contextmanager
def serving_in_background(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """`app` served from a thread on a free port of `host` while the block runs; yields its base URL.

    The socket is bound before the server starts, so no other process can take the port meanwhile.
    """
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True, name="mm2d-serve-http")
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the embedding server stopped while starting")
            time.sleep(0.01)
        yield f"http://{host}:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()
