"""`mm2d export`: the folder loads as is in sentence-transformers and ONNX Runtime, with our vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.cli import main
from mm2d_integrations.core.onnx import run_graph
from mm2d_integrations.serving.export import export_model
from mm2d_integrations.training.adapt import adapt
from tests.tiny_models import build_tiny_model

TEXTS = ["a short one", "a much longer sentence about the quarterly energy report and its numbers", "ok", "Two dogs run in the park."]


def _min_cosine(first: np.ndarray, second: np.ndarray) -> float:
    first = first / np.linalg.norm(first, axis=1, keepdims=True)
    second = second / np.linalg.norm(second, axis=1, keepdims=True)
    return float((first * second).sum(1).min())


def _sentence_transformer(folder: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu")


@pytest.fixture(scope="module")
def minilm_cut(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    out = tmp_path_factory.mktemp("export") / "minilm-3x128"
    export_model(minilm_path, out, num_layers=3, dimensions=128, query_prompt="query: ")
    return out


def test_the_folder_holds_only_the_kept_layers(minilm_cut: Path) -> None:
    assert json.loads((minilm_cut / "config.json").read_text())["num_hidden_layers"] == 3
    with safe_open(str(minilm_cut / "model.safetensors"), "pt") as weights:
        layers = {int(name.split("layer.")[1].split(".")[0]) for name in weights.keys() if "layer." in name}
    assert layers == {0, 1, 2}
    assert not list(minilm_cut.parent.glob(".*mm2d-export*"))  # no staging folder left behind


def test_sentence_transformers_loads_it_and_gives_our_vectors(minilm_cut: Path, minilm_path: Path) -> None:
    ours = Matryoshka2DEncoder(minilm_path, num_layers=3, dimensions=128, query_prompt="query: ")
    model = _sentence_transformer(minilm_cut)
    assert model.truncate_dim == 128 and len(model[0].auto_model.encoder.layer) == 3
    theirs = model.encode(TEXTS)
    assert theirs.shape == (len(TEXTS), 128)
    assert _min_cosine(theirs, ours.encode_documents(TEXTS)) >= 0.99999
    assert _min_cosine(model.encode(TEXTS, prompt_name="query"), ours.encode_queries(TEXTS)) >= 0.99999


def test_our_encoder_loads_the_exported_folder(minilm_cut: Path, minilm_path: Path) -> None:
    reloaded = Matryoshka2DEncoder(minilm_cut)
    assert (reloaded.num_layers, reloaded.dimensions, reloaded.query_prompt) == (3, 128, "query: ")
    expected = Matryoshka2DEncoder(minilm_path, num_layers=3, dimensions=128, query_prompt="query: ")
    np.testing.assert_allclose(reloaded.encode_queries(TEXTS), expected.encode_queries(TEXTS), atol=1e-6)


def test_the_onnx_graph_gives_our_vectors(tmp_path: Path, minilm_path: Path) -> None:
    out = export_model(minilm_path, tmp_path / "onnx", num_layers=2, dimensions=64, pooling="cls", format="onnx")
    ours = Matryoshka2DEncoder(minilm_path, num_layers=2, dimensions=64, pooling="cls")
    vectors = run_graph(out / "model.onnx", ours.loaded_model.tokenizer(TEXTS, padding=True, return_tensors="np"))
    assert vectors.shape == (len(TEXTS), 64)
    assert _min_cosine(vectors, ours.encode_documents(TEXTS)) >= 0.99999


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    build_tiny_model(folder, "bert", minilm_path, pooling="mean")
    return folder


@pytest.mark.parametrize("method", ["ridge", "lowrank"])
def test_an_affine_exit_head_becomes_one_dense_module(method: str, tiny_base: Path, tmp_path: Path, sentences: list[str]) -> None:
    adapted = tmp_path / "adapted"
    adapt(tiny_base, sentences[:60], adapted, layers=[2], exit_layers=[], method=method, loss="cosine", pseudo_queries=0, epochs=1)
    out = export_model(adapted, tmp_path / "export", num_layers=2)
    modules = [module["type"].rsplit(".", 1)[-1] for module in json.loads((out / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling", "Dense", "Normalize"]
    ours = Matryoshka2DEncoder(adapted, num_layers=2).encode_documents(TEXTS)
    plain = Matryoshka2DEncoder(tiny_base, num_layers=2).encode_documents(TEXTS)
    assert _min_cosine(ours, plain) < 0.999  # the head matters, so the check below sees it
    assert _min_cosine(_sentence_transformer(out).encode(TEXTS), ours) >= 0.99999
    assert _min_cosine(Matryoshka2DEncoder(out).encode_documents(TEXTS), ours) >= 0.99999


def test_an_exit_layer_exports_as_the_last_layer_in_both_formats(tiny_base: Path, tmp_path: Path, sentences: list[str]) -> None:
    adapted = tmp_path / "adapted"
    adapt(tiny_base, sentences[:60], adapted, layers=[2], exit_layers=[2])
    ours = Matryoshka2DEncoder(adapted, num_layers=2)
    expected = ours.encode_documents(TEXTS)
    out = export_model(adapted, tmp_path / "export", num_layers=2)
    assert _min_cosine(_sentence_transformer(out).encode(TEXTS), expected) >= 0.99999
    assert _min_cosine(Matryoshka2DEncoder(out).encode_documents(TEXTS), expected) >= 0.99999
    graph = export_model(adapted, tmp_path / "onnx", num_layers=2, format="onnx")
    vectors = run_graph(graph / "model.onnx", ours.loaded_model.tokenizer(TEXTS, padding=True, return_tensors="np"))
    assert _min_cosine(vectors, expected) >= 0.99999


def test_an_mlp_head_exports_to_onnx_only(tiny_base: Path, tmp_path: Path, sentences: list[str]) -> None:
    adapted = tmp_path / "adapted"
    adapt(tiny_base, sentences[:60], adapted, layers=[1], method="mlp", epochs=1)
    with pytest.raises(ValueError, match="mlp head"):
        export_model(adapted, tmp_path / "refused", num_layers=1)
    assert not (tmp_path / "refused").exists()
    out = export_model(adapted, tmp_path / "onnx", num_layers=1, format="onnx")
    ours = Matryoshka2DEncoder(adapted, num_layers=1)
    vectors = run_graph(out / "model.onnx", ours.loaded_model.tokenizer(TEXTS, padding=True, return_tensors="np"))
    assert _min_cosine(vectors, ours.encode_documents(TEXTS)) >= 0.99999


def test_export_refuses_a_non_empty_out_and_writes_nothing_on_failure(tiny_base: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        export_model(tiny_base, taken)
    assert [path.name for path in taken.iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="num_layers"):
        export_model(tiny_base, tmp_path / "bad", num_layers=99)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["taken"]


def test_the_export_command(tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cut"
    assert main(["export", "--model", str(tiny_base), "--layers", "2", "--dims", "16", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert _min_cosine(_sentence_transformer(out).encode(TEXTS), Matryoshka2DEncoder(tiny_base, num_layers=2, dimensions=16).encode_documents(TEXTS)) >= 0.99999
    assert main(["export", "--model", str(tiny_base), "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_no_int8_export_is_offered(tiny_base: Path, tmp_path: Path) -> None:
    """An int8 folder or graph would miss the quality bar (ONNX Runtime's dynamic int8: docs/performance.md),
    so it is refused; compute_precision="int8" over the exported float32 folder is the way."""
    with pytest.raises(ValueError, match="precision must be one of float32, got 'int8'"):
        export_model(tiny_base, tmp_path / "int8", format="onnx", precision="int8")
