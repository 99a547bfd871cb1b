"""Fuzzing `mm2d serve` from its own OpenAPI schema: every operation, valid and invalid requests, with the
key and without it, against the real server on loopback. No answer may be a 5xx, none may take long,
and the server answers /health after each case."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from mm2d_integrations.core.encoder import Matryoshka2DEncoder
from mm2d_integrations.serving.server import ServerLimits, create_app, serving_in_background

KEY = "fuzz-key"
MODEL = "minilm"
EXAMPLES = 25  # per operation, generation mode and key setting: the whole file runs in well under a minute
OPERATIONS = [("POST", "/v1/embeddings"), ("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/health")]


@pytest.fixture(scope="module", params=[None, KEY], ids=["no key", "key"])
def served(request: pytest.FixtureRequest, minilm_path: Path) -> Iterator[tuple[str, str | None, schemathesis.BaseSchema]]:
    """The server, its key, and the schema it publishes (read with the key where it has one)."""
    encoder = Matryoshka2DEncoder(minilm_path, num_layers=2, dimensions=64)
    app = create_app(encoder, api_key=request.param, model_name=MODEL, limits=ServerLimits(max_texts_per_request=8, max_chars_per_text=300))
    with serving_in_background(app) as base:
        headers = {"Authorization": f"Bearer {request.param}"} if request.param else {}
        yield base, request.param, schemathesis.openapi.from_dict(httpx.get(base + "/openapi.json", headers=headers).raise_for_status().json())


def test_the_fuzzed_operations_are_every_operation_of_the_schema(served: tuple[str, str | None, schemathesis.BaseSchema]) -> None:
    published = {(result.ok().method.upper(), result.ok().path) for result in served[2].get_all_operations()}
    assert published == set(OPERATIONS)


@pytest.mark.parametrize(
    ("method", "path", "mode"),  # an operation without parameters has no invalid request to generate
    [(method, path, mode) for method, path in OPERATIONS for mode in GenerationMode if method == "POST" or mode == GenerationMode.POSITIVE],
)
def test_no_request_gets_a_5xx_or_hangs_and_the_server_stays_up(
    served: tuple[str, str | None, schemathesis.BaseSchema], method: str, path: str, mode: GenerationMode
) -> None:
    base, key, schema = served

    @given(case=schema[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def one_case(case: schemathesis.Case) -> None:
        if mode == GenerationMode.POSITIVE and isinstance(case.body, dict):
            case.body["model"] = MODEL  # so that valid requests reach the model, not only the 404 of an unknown name
        if key:  # without the key (or with another) everything but /health is refused before the body is read
            for refused in ({}, {"Authorization": "Bearer not-the-key"}):
                response = case.call(base_url=base, headers=refused, timeout=30)
                case.validate_response(response, checks=[not_a_server_error])
                assert response.status_code == (200 if path == "/health" else 401)
        response = case.call(base_url=base, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)
        case.validate_response(response, checks=[not_a_server_error])
        assert response.headers.get("content-type", [""])[0].startswith("application/json") or path == "/metrics"
        assert httpx.get(base + "/health", timeout=10).status_code == 200

    one_case()
