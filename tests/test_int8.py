"""`compute_precision="int8"`: SmoothQuant int8 linear layers with per-token scales keep MiniLM within
its quality bar at every depth, are made once per process, and leave the float32 model untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.int8 import Int8Linear, calibration_texts, quantize_linears


def _min_cosine(first: np.ndarray, second: np.ndarray) -> float:
    return float((first * second).sum(1).min())


def test_int8_keeps_minilm_close_to_float32_at_every_depth(minilm_path: Path, sentences: list[str]) -> None:
    exact = Matryoshka2DEncoder(minilm_path)
    before = exact.encode_documents(sentences)
    int8 = Matryoshka2DEncoder(minilm_path, compute_precision="int8", query_num_layers=6)
    vectors = int8.encode_documents(sentences)
    assert 0.99 <= _min_cosine(vectors, before) < 0.99999  # lossy, within the bar
    np.testing.assert_array_equal(exact.encode_documents(sentences), before)  # the float32 model is not touched
    assert isinstance(int8._runner.layers[0].intermediate.dense, Int8Linear)
    assert isinstance(exact._loaded.layers[0].intermediate.dense, torch.nn.Linear)
    layerwise = int8.encode_layerwise(sentences[:30], [3, 6])
    assert _min_cosine(layerwise[6], before[:30]) >= 0.99
    assert _min_cosine(layerwise[3], exact.encode_layerwise(sentences[:30], [3])[3]) >= 0.99
    again = Matryoshka2DEncoder(minilm_path, compute_precision="int8", dimensions=64)
    assert again._runner is int8._runner and again.fingerprint["dimensions"] == 64  # quantised once per process


def test_per_token_scales_keep_an_outlier_token_from_coarsening_the_others() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    rows = torch.randn(8, 64)
    rows[0] *= 200  # one token with a huge range, as MiniLM's outlier channels give
    layer = torch.nn.Sequential(linear)
    expected = linear(rows).detach()
    quantize_linears(layer, lambda: layer(rows))
    got = layer(rows)
    assert isinstance(layer[0], Int8Linear)
    # each ordinary token keeps its own resolution: with one scale for the batch they would lose ~all of it
    assert torch.nn.functional.cosine_similarity(got[1:], expected[1:]).min() > 0.999


def test_int8_is_refused_where_it_cannot_run(minilm_path: Path) -> None:
    with pytest.raises(ValueError, match="compute_precision='int8' runs on the cpu, not on cuda"):
        Matryoshka2DEncoder(minilm_path, compute_precision="int8", device="cuda")
    with pytest.raises(ValueError, match="compute_precision='int8' runs with backend='torch', not 'onnx'"):
        Matryoshka2DEncoder(minilm_path, compute_precision="int8", backend="onnx")
    with pytest.raises(ValueError, match="compute_precision='int8' runs on the cpu with float32 weights"):
        Matryoshka2DEncoder(minilm_path, compute_precision="int8", dtype="bfloat16")


def test_calibration_text_is_packaged_prose() -> None:
    texts = calibration_texts()
    assert 50 <= len(texts) <= 256 and all(len(text) > 40 for text in texts)


def test_int8_encodes_from_several_threads_at_once(minilm_path: Path, sentences: list[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    int8 = Matryoshka2DEncoder(minilm_path, compute_precision="int8", batch_size=4)
    chunks = [sentences[start : start + 12] for start in range(0, 48, 12)]
    serial = [int8.encode_documents(chunk) for chunk in chunks]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(int8.encode_documents, chunks))
    for expected, got in zip(serial, parallel):
        np.testing.assert_allclose(got, expected, atol=1e-6)
