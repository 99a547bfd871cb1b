"""On a CUDA GPU (skipped without one; benchmarks/gpu.sh runs these with int8's refusal): float16 and
bfloat16 weights, bf16 compute, every pooling, depth cuts and exit heads give the CPU's float32
vectors within half precision's error, and the large model's stand-in agrees with
sentence-transformers on the GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.core.pooling import POOLING_MODES
from mm2d_integrations.training.adapt import adapt
from tests.test_large_checkpoint import large_folder  # noqa: F401 (a fixture)
from tests.tiny_models import build_tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: benchmarks/gpu.sh runs these")
HALF = ["float16", pytest.param("bfloat16", marks=pytest.mark.skipif(
    not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(), reason="needs a CUDA device with native bfloat16"))]


def min_cosine(vectors: np.ndarray, reference: np.ndarray) -> float:
    """Our vectors leave normalised."""
    return float((vectors * reference).sum(1).min())


@pytest.fixture(scope="module")
def texts(sentences: list[str]) -> list[str]:
    """Sentences of mixed length and one text past the model's 256 tokens."""
    return [*sentences[:64], " ".join(sentences[:100])]


@pytest.mark.parametrize("pooling", list(POOLING_MODES))
@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_weights_on_cuda_agree_with_float32_on_the_cpu(minilm_path: Path, texts: list[str], dtype: str, pooling: str) -> None:
    gpu = Matryoshka2DEncoder(minilm_path, device="cuda", dtype=dtype, pooling=pooling)
    assert {(parameter.device.type, parameter.dtype) for parameter in gpu.loaded_model.model.parameters()} == {("cuda", getattr(torch, dtype))}
    vectors = gpu.encode_documents(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (len(texts), 384)
    assert min_cosine(vectors, Matryoshka2DEncoder(minilm_path, device="cpu", pooling=pooling).encode_documents(texts)) >= 0.999


@pytest.mark.parametrize("precision, floor", [("float32", 0.99999), ("bf16", 0.999)])
def test_float32_weights_and_bf16_compute_on_cuda(minilm_path: Path, texts: list[str], precision: str, floor: float) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no native bfloat16: compute_precision='bf16' falls back to float32 there")
    gpu = Matryoshka2DEncoder(minilm_path, device="cuda", compute_precision=precision)
    assert gpu.compute_precision == precision
    cpu = Matryoshka2DEncoder(minilm_path, device="cpu")
    assert min_cosine(gpu.encode_documents(texts), cpu.encode_documents(texts)) >= floor
    assert min_cosine(gpu.encode_queries(texts), cpu.encode_queries(texts)) >= floor


@pytest.mark.parametrize("dtype", HALF)
def test_depths_on_cuda_agree_with_the_cpu(minilm_path: Path, texts: list[str], dtype: str) -> None:
    """A cut encoder, and one pass of the full model read off at several depths."""
    cpu = Matryoshka2DEncoder(minilm_path, device="cpu").encode_layerwise(texts, [2, 4, 6])
    gpu = Matryoshka2DEncoder(minilm_path, device="cuda", dtype=dtype).encode_layerwise(texts, [2, 4, 6])
    cut = Matryoshka2DEncoder(minilm_path, device="cuda", dtype=dtype, num_layers=3)
    assert len(cut.transformer_layers) == 3
    for depth in (2, 4, 6):
        assert min_cosine(gpu[depth], cpu[depth]) >= 0.999
    assert min_cosine(cut.encode_documents(texts), Matryoshka2DEncoder(minilm_path, device="cpu", num_layers=3).encode_documents(texts)) >= 0.999


def test_exit_heads_on_cuda(tmp_path: Path, minilm_path: Path, sentences: list[str], texts: list[str]) -> None:
    base, adapted = tmp_path / "base", tmp_path / "adapted"
    base.mkdir()
    build_tiny_model(base, "bert", minilm_path, pooling="mean")
    adapt(base, sentences[:80], adapted, exit_layers=[], method="ridge", loss="cosine", epochs=2)
    cpu = Matryoshka2DEncoder(adapted, device="cpu", num_layers=2).encode_documents(texts)
    for dtype, floor in (("float32", 0.99999), ("float16", 0.999)):
        gpu = Matryoshka2DEncoder(adapted, device="cuda", dtype=dtype, num_layers=2)
        assert 2 in gpu.loaded_model.exit_heads.heads
        assert min_cosine(gpu.encode_documents(texts), cpu) >= floor
        assert not np.allclose(gpu.encode_documents(texts), Matryoshka2DEncoder(base, device="cuda", dtype=dtype, num_layers=2).encode_documents(texts))


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-3), ("float16", 5e-2)])
def test_the_large_stand_in_agrees_with_sentence_transformers_on_cuda(large_folder: Path, texts: list[str], dtype: str, tolerance: float) -> None:  # noqa: F811
    """Random weights give every text nearly the same CLS vector, so the difference is measured against
    the part that varies between texts."""
    from sentence_transformers import SentenceTransformer

    theirs = SentenceTransformer(str(large_folder), device="cuda", model_kwargs={"dtype": getattr(torch, dtype)}).encode(texts)
    ours = Matryoshka2DEncoder(large_folder, device="cuda", dtype=dtype, normalize=False).encode_documents(texts)
    assert np.abs(ours - theirs).max() <= tolerance * np.abs(theirs - theirs.mean(0)).max()
