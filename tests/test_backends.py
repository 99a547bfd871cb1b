"""`backend="onnx"`: ONNX Runtime over the cut model gives the torch backend's vectors, at every
depth, width and pooling, with exit heads, through the adapters and the command line."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import mm2d_integrations
from mm2d_integrations import BACKENDS, Matryoshka2DEncoder
from mm2d_integrations.cli import build_parser
from mm2d_integrations.core.pooling import POOLING_MODES
from mm2d_integrations.training.adapt import adapt
from tests.tiny_models import build_tiny_model

TEXTS = ["a short one", "a much longer sentence about the quarterly energy report and its numbers", "ok", "Two dogs run in the park."]


def _assert_same_vectors(first: np.ndarray, second: np.ndarray) -> None:
    assert first.shape == second.shape
    assert float((first * second).sum(1).min()) >= 0.99999


def test_backends_are_listed_and_reach_every_front_end() -> None:
    assert BACKENDS == ("torch", "onnx") and "BACKENDS" in mm2d_integrations.__all__
    assert build_parser().parse_args(["embed", "a", "b", "--backend", "onnx"]).backend == "onnx"
    from mm2d_integrations.langchain import Matryoshka2DEmbeddings

    assert "backend" in Matryoshka2DEmbeddings.model_fields


def test_onnx_matches_torch_on_minilm(minilm_path: Path, sentences: list[str]) -> None:
    onnx = Matryoshka2DEncoder(minilm_path, backend="onnx")
    torch_backend = Matryoshka2DEncoder(minilm_path)
    assert onnx.backend == "onnx" and onnx.fingerprint == torch_backend.fingerprint  # the same vectors, the same space
    _assert_same_vectors(onnx.encode_documents(sentences), torch_backend.encode_documents(sentences))
    by_depth = onnx.encode_layerwise(sentences[:20], [1, 3, 6])
    expected = torch_backend.encode_layerwise(sentences[:20], [1, 3, 6])
    for depth in (1, 3, 6):
        _assert_same_vectors(by_depth[depth], expected[depth])


@pytest.mark.parametrize("pooling", list(POOLING_MODES))
def test_onnx_matches_torch_with_every_pooling_cut_in_depth_and_width(minilm_path: Path, pooling: str) -> None:
    options = {"num_layers": 2, "dimensions": 48, "pooling": pooling}
    _assert_same_vectors(
        Matryoshka2DEncoder(minilm_path, backend="onnx", **options).encode_queries(TEXTS),
        Matryoshka2DEncoder(minilm_path, **options).encode_queries(TEXTS),
    )


@pytest.mark.parametrize("architecture", ["modernbert", "distilbert"])
def test_onnx_on_other_architectures(tmp_path: Path, minilm_path: Path, architecture: str) -> None:
    build_tiny_model(tmp_path, architecture, minilm_path, pooling="cls")
    onnx, reference = Matryoshka2DEncoder(tmp_path, backend="onnx"), Matryoshka2DEncoder(tmp_path)
    by_depth = onnx.encode_layerwise(TEXTS, range(1, onnx.max_layers + 1))
    expected = reference.encode_layerwise(TEXTS, range(1, onnx.max_layers + 1))
    for depth, vectors in by_depth.items():
        _assert_same_vectors(vectors, expected[depth])


def test_onnx_applies_exit_heads(tmp_path: Path, minilm_path: Path, sentences: list[str]) -> None:
    build_tiny_model(tmp_path / "base", "bert", minilm_path, pooling="mean")
    adapt(tmp_path / "base", sentences[:60], tmp_path / "adapted", layers=[2], exit_layers=[], method="mlp", epochs=1)
    _assert_same_vectors(
        Matryoshka2DEncoder(tmp_path / "adapted", num_layers=2, backend="onnx").encode_documents(TEXTS),
        Matryoshka2DEncoder(tmp_path / "adapted", num_layers=2).encode_documents(TEXTS),
    )


def test_the_graph_is_exported_once_and_then_read_from_the_cache(
    tmp_path: Path, minilm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mm2d_integrations.core.onnx as onnx_backend

    build_tiny_model(tmp_path / "model", "bert", minilm_path, pooling="mean")
    monkeypatch.setenv("MM2D_CACHE_DIR", str(tmp_path / "cache"))
    first = Matryoshka2DEncoder(tmp_path / "model", backend="onnx").encode_documents(TEXTS)
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1

    def refuse(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_backend, "export_graph", refuse)
    model = onnx_backend.OnnxModel(Matryoshka2DEncoder(tmp_path / "model").loaded_model)  # a new session, the cached graph
    assert model.path.parent == tmp_path / "cache" / "onnx"
    np.testing.assert_allclose(Matryoshka2DEncoder(tmp_path / "model", backend="onnx").encode_documents(TEXTS), first)


def test_bad_backends_are_refused(minilm_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="backend must be one of torch, onnx, got 'tvm'"):
        Matryoshka2DEncoder(minilm_path, backend="tvm")
    with pytest.raises(ValueError, match="runs on the cpu with float32 weights"):
        Matryoshka2DEncoder(minilm_path, backend="onnx", dtype="bfloat16")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'mm2d-integrations\[onnx\]'"):
        Matryoshka2DEncoder(minilm_path, num_layers=1, backend="onnx")
