"""`compute_precision="int8"`: SmoothQuant int8 linear layers with per-token scales keep MiniLM within
its quality bar at every depth, are made once per process, and leave the float32 model untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.core.int8 import Int8Linear, calibration_texts, quantize_linears
from tests.conftest import Avx2Run


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


class _Attention(torch.nn.Module):
    """Query, key and value read one input; `other` reads another tensor of the same shape."""

    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value, self.other = (torch.nn.Linear(64, 32) for _ in range(4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.query(x), self.key(x), self.value(x), self.other(x + 1)


class _FeedForward(torch.nn.Module):
    def __init__(self) -> None:
        from transformers.activations import GELUActivation

        super().__init__()
        self.dense, self.intermediate_act_fn = torch.nn.Linear(64, 128), GELUActivation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


def test_linears_reading_one_input_run_as_one_product_and_a_gelu_runs_in_it() -> None:
    import copy

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"attention": _Attention(), "feed_forward": _FeedForward()})
    original = copy.deepcopy(model)
    rows, other_rows = torch.randn(16, 64), torch.randn(16, 64)
    quantize_linears(model, lambda: (model["attention"](rows), model["feed_forward"](rows)))
    attention = model["attention"]
    assert attention.query.shared is attention.key.shared is attention.value.shared  # one product of 96 columns
    assert attention.query.shared.weight.shape == (64, 96) and attention.other.shared is not attention.query.shared
    unused = torch.nn.ModuleDict({"first": torch.nn.Linear(8, 4), "second": torch.nn.Linear(16, 4)})
    quantize_linears(unused, lambda: None)  # never run in calibration: nothing says they share an input
    assert unused["first"].shared is not unused["second"].shared
    assert isinstance(model["feed_forward"].intermediate_act_fn, torch.nn.Identity)  # the product applies the GELU
    expected = [*original["attention"](rows), original["feed_forward"](rows)]
    for output, reference in zip([*attention(rows), model["feed_forward"](rows)], expected):
        assert torch.nn.functional.cosine_similarity(output, reference.detach()).min() > 0.999
    attention.query(rows)  # leaves key's and value's columns of this input for them
    fresh = attention.key(other_rows)  # another input: its own product, not the columns left for `rows`
    assert torch.nn.functional.cosine_similarity(fresh, original["attention"].key(other_rows).detach()).min() > 0.999


_INT8_IN_A_PROCESS = """
import sys
import numpy as np
from mm2d_integrations import Matryoshka2DEncoder
np.save(sys.stdout.buffer, Matryoshka2DEncoder(sys.argv[1], compute_precision="int8").encode_documents(sys.argv[2:]))
"""


def test_kernels_compiled_for_another_cpu_capability_are_never_loaded(minilm_path: Path, avx2_run: Avx2Run) -> None:
    """torch's kernel cache does not key kernels by CPU capability: an AVX2-forced process that compiled
    int8's products made the next default process on the same cache folder abort (heap corruption).
    Each capability now gets its own subfolder, so both processes run and stay within the bar. The
    AVX2 process is tests/conftest.py's, which compiled its products into a fresh cache folder."""
    import io
    import os
    import subprocess
    import sys

    texts = avx2_run.texts
    expected = Matryoshka2DEncoder(minilm_path).encode_documents(texts)
    assert _min_cosine(avx2_run.vectors()[-1], expected) >= 0.99  # AVX2 first: it ran, and wrote its kernels
    assert "cpu-avx2" in {path.name for path in avx2_run.kernels.iterdir()}
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(avx2_run.kernels)}
    for _ in range(2):  # then the default capability twice on the same folder (compiled, then loaded from disk)
        result = subprocess.run(
            [sys.executable, "-c", _INT8_IN_A_PROCESS, str(minilm_path), *texts], env=env, capture_output=True, timeout=600
        )
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        assert _min_cosine(np.load(io.BytesIO(result.stdout)), expected) >= 0.99


def test_the_kernel_cache_is_keyed_once_by_capability(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mm2d_integrations.core.int8 import kernel_cache_for_this_cpu

    capability = torch.backends.cpu.get_cpu_capability().lower()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert kernel_cache_for_this_cpu() == str(tmp_path / f"cpu-{capability}")
    assert kernel_cache_for_this_cpu() == str(tmp_path / f"cpu-{capability}")  # a child process inherits it: not nested
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cpu-avx2"))  # a parent forced to another capability
    assert kernel_cache_for_this_cpu() == str(tmp_path / f"cpu-{capability}")
