"""Checkpoints as sentence-transformers saves them: every file that says how to embed is read, and the
vectors equal sentence-transformers' own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mm2d_integrations import Matryoshka2DEncoder
from tests.tiny_models import add_dense, build_tiny_model, copy_as_hub_cache, set_modules

TEXTS = ["a short one", "a much longer sentence about the quarterly energy report and its numbers", "ok", ""]


def _theirs(folder: Path, texts: list[str], *, side: str = "document", **kwargs) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    encode = model.encode_query if side == "query" else model.encode_document if side == "document" else model.encode
    return encode(texts, convert_to_numpy=True, **kwargs)


def _assert_same_direction(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    theirs = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    assert (ours * theirs).sum(1).min() >= 0.99999


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooling_without_the_prompt_equals_sentence_transformers(tmp_path: Path, minilm_path: Path, pooling: str) -> None:
    build_tiny_model(tmp_path, "bert", minilm_path, pooling=pooling, prompts={"query": "find the passage about: "},
                     include_prompt=False)
    encoder = Matryoshka2DEncoder(tmp_path)
    assert not encoder.include_prompt
    _assert_same_direction(encoder.encode_queries(TEXTS), _theirs(tmp_path, TEXTS, side="query"))
    with_prompt = Matryoshka2DEncoder(tmp_path, query_prompt="find the passage about: ", pooling=pooling)
    assert not np.allclose(with_prompt.encode_queries(TEXTS[:2]), encoder.encode(["find the passage about: " + t for t in TEXTS[:2]]))
    included = tmp_path / "included"
    build_tiny_model(included, "bert", minilm_path, pooling=pooling, prompts={"query": "find the passage about: "})
    assert not np.allclose(Matryoshka2DEncoder(included).encode_queries(TEXTS[:2]), encoder.encode_queries(TEXTS[:2]), atol=1e-3)
    assert Matryoshka2DEncoder(included).space_id != encoder.space_id


@pytest.mark.parametrize(("activation", "normalized"), [("torch.nn.modules.activation.Tanh", True), ("torch.nn.modules.linear.Identity", False)])
def test_dense_modules_equal_sentence_transformers(tmp_path: Path, minilm_path: Path, activation: str, normalized: bool) -> None:
    build_tiny_model(tmp_path, "bert", minilm_path, pooling="mean")
    add_dense(tmp_path, [(32, 24, activation), (24, 16, activation)], normalized=normalized)
    encoder = Matryoshka2DEncoder(tmp_path, normalize=False)
    assert (encoder.max_dimensions, encoder.dimensions) == (16, 16)
    theirs = _theirs(tmp_path, TEXTS, normalize_embeddings=False)
    np.testing.assert_allclose(encoder.encode_documents(TEXTS), theirs, atol=1e-5)
    _assert_same_direction(Matryoshka2DEncoder(tmp_path).encode_documents(TEXTS), theirs)
    cut = Matryoshka2DEncoder(tmp_path, dimensions=8).encode_documents(TEXTS)
    _assert_same_direction(cut, _theirs(tmp_path, TEXTS, truncate_dim=8))
    assert encoder.pooled_layerwise(TEXTS, [2])[2].shape == (len(TEXTS), 32)  # exit heads work before Dense
    assert "+dense:" in encoder.fingerprint["weights"]


def test_dense_weights_are_part_of_the_space(tmp_path: Path, minilm_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, seed in ((first, 1), (second, 2)):
        build_tiny_model(folder, "bert", minilm_path, pooling="mean")
        add_dense(folder, [(32, 16, "torch.nn.modules.activation.Tanh")], seed=seed)
    assert Matryoshka2DEncoder(first).space_id != Matryoshka2DEncoder(second).space_id


def test_dense_refuses_what_it_cannot_run(tmp_path: Path, minilm_path: Path) -> None:
    build_tiny_model(tmp_path, "bert", minilm_path, pooling="mean")
    add_dense(tmp_path, [(32, 16, "os.system")])
    with pytest.raises(ValueError, match="'os.system' is not a torch.nn module class"):
        Matryoshka2DEncoder(tmp_path)
    set_modules(tmp_path, ["Transformer", "Pooling", "Normalize", "Dense"])
    with pytest.raises(ValueError, match="implements Transformer -> Pooling -> Dense -> Normalize in that order"):
        Matryoshka2DEncoder(tmp_path)
    set_modules(tmp_path, ["Transformer", "Pooling", "LayerNorm"])
    with pytest.raises(ValueError, match="modules Transformer, Pooling, LayerNorm"):
        Matryoshka2DEncoder(tmp_path)


def test_truncate_dim_in_the_configuration_is_the_default_width(tmp_path: Path, minilm_path: Path) -> None:
    build_tiny_model(tmp_path, "bert", minilm_path, pooling="mean", config={"truncate_dim": 12})
    encoder = Matryoshka2DEncoder(tmp_path)
    assert (encoder.dimensions, encoder.max_dimensions) == (12, 32)
    _assert_same_direction(encoder.encode_documents(TEXTS), _theirs(tmp_path, TEXTS))
    assert Matryoshka2DEncoder(tmp_path, dimensions=20).dimensions == 20


@pytest.mark.parametrize("normalized", [True, False])
def test_normalize_present_or_absent_equals_sentence_transformers(tmp_path: Path, minilm_path: Path, normalized: bool) -> None:
    build_tiny_model(tmp_path, "bert", minilm_path, pooling="mean")
    if not normalized:
        set_modules(tmp_path, ["Transformer", "Pooling"])
    ours = Matryoshka2DEncoder(tmp_path, normalize=False).encode_documents(TEXTS)
    np.testing.assert_allclose(ours, _theirs(tmp_path, TEXTS), atol=1e-5)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0) == normalized


def test_named_prompts_and_the_default_prompt_name(tmp_path: Path, minilm_path: Path) -> None:
    prompts = {"classification": "Classify: ", "clustering": "Cluster: "}
    build_tiny_model(tmp_path, "bert", minilm_path, pooling="mean", prompts=prompts, config={"default_prompt_name": "clustering"})
    encoder = Matryoshka2DEncoder(tmp_path)
    assert encoder.prompts == prompts and encoder.query_prompt == encoder.document_prompt == "Cluster: "
    _assert_same_direction(encoder.encode_documents(TEXTS), _theirs(tmp_path, TEXTS, side="encode"))
    chosen = Matryoshka2DEncoder(tmp_path, document_prompt=encoder.prompts["classification"])
    _assert_same_direction(chosen.encode_documents(TEXTS), _theirs(tmp_path, TEXTS, side="encode", prompt_name="classification"))


_HUB_SCRIPT = """
from mm2d_integrations import Matryoshka2DEncoder
encoder = Matryoshka2DEncoder("ielabgroup/Starbucks-msmarco", num_layers=2, dimensions=32)
print(encoder.pooling, encoder.max_length, encoder.trained_pairs)
"""


def test_starbucks_preset_through_the_hub_cache(tmp_path: Path, minilm_path: Path) -> None:
    folder = tmp_path / "model"
    build_tiny_model(folder, "bert", minilm_path)  # a bare transformers folder, as Starbucks-msmarco is
    copy_as_hub_cache(folder, tmp_path / "cache", "ielabgroup/Starbucks-msmarco")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", _HUB_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # The table's max_length 512 is lowered to the 128 positions of the tiny stand-in.
    assert "cls 128 ((2, 32), (4, 64), (6, 128), (8, 256), (10, 512), (12, 768))" in result.stdout


def test_cls_pooling_takes_the_first_pooled_token() -> None:
    from mm2d_integrations.core.pooling import pool

    hidden = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    np.testing.assert_array_equal(pool(hidden, mask, "cls").numpy(), [[0, 1], [8, 9]])
    assert json.dumps(pool(hidden, torch.ones(2, 3), "cls").tolist()) == "[[0.0, 1.0], [6.0, 7.0]]"


def test_eval_report_shows_the_trained_pairs() -> None:
    from mm2d_integrations.core.checkpoint import STARBUCKS_PAIRS
    from mm2d_integrations.evaluation.grid import GridResult
    from mm2d_integrations.evaluation.report import format_report

    scores = {(12, 768): 80.0, (12, 32): 75.0, (2, 768): 72.0, (2, 32): 70.0}
    result = GridResult("starbucks", "sts", {"spearman": scores}, (12, 768), 10, 1.0, {12: 1.0, 2: 0.2}, 1.5,
                        trained_pairs=STARBUCKS_PAIRS)
    assert "trained for (layers, dimensions): (2, 32), (4, 64), (6, 128), (8, 256), (10, 512), (12, 768)" in format_report(result)
