from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from mm2d_integrations import Matryoshka2DEncoder, truncate_dimensions
from mm2d_integrations.evaluation.datasets import StsPairs
from tests.conftest import Avx2Run
from tests.tiny_models import build_tiny_model, copy_as_hub_cache

DIMENSIONS = (384, 256, 128, 64, 32)


@pytest.fixture(scope="module")
def reference_model(minilm_path: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


def _reference_vectors(reference_model, texts: list[str], num_layers: int) -> np.ndarray:
    """sentence-transformers with layers sliced as the model card does (un-normalised)."""
    encoder = reference_model[0].auto_model.encoder
    all_layers = encoder.layer
    encoder.layer = all_layers[:num_layers]
    try:
        return reference_model.encode(texts, normalize_embeddings=False, convert_to_numpy=True)
    finally:
        encoder.layer = all_layers


@pytest.mark.parametrize("num_layers", range(1, 7))
def test_matches_sentence_transformers_at_every_depth_and_width(
    reference_model, minilm_path: Path, sentences: list[str], num_layers: int
) -> None:
    expected = _reference_vectors(reference_model, sentences, num_layers)
    for dimensions in DIMENSIONS:
        encoder = Matryoshka2DEncoder(minilm_path, num_layers=num_layers, dimensions=dimensions)
        ours = encoder.encode_documents(sentences)
        assert ours.shape == (len(sentences), dimensions) and ours.dtype == np.float32
        reference = expected[:, :dimensions] / np.linalg.norm(expected[:, :dimensions], axis=1, keepdims=True)
        assert (ours * reference).sum(1).min() >= 0.99999, (num_layers, dimensions)


def test_normalize_off_is_sentence_transformers_normalize_embeddings_off(reference_model, minilm_path: Path, tmp_path: Path) -> None:
    """A checkpoint whose pipeline ends in Normalize (MiniLM) gives unit vectors either way, as in
    sentence-transformers; `normalize=False` then leaves a cut as it is, and one without Normalize raw."""
    texts = ["a cat sits on the mat", "quarterly numbers", ""]
    for dimensions in (384, 64):
        ours = Matryoshka2DEncoder(minilm_path, normalize=False, dimensions=dimensions).encode_documents(texts)
        theirs = reference_model.encode(texts, normalize_embeddings=False, truncate_dim=dimensions)
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    build_tiny_model(tmp_path, "bert", minilm_path, pooling="mean")
    (tmp_path / "modules.json").write_text(json.dumps(json.loads((tmp_path / "modules.json").read_text())[:2]))
    raw = Matryoshka2DEncoder(tmp_path, normalize=False).encode_documents(texts)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw, Matryoshka2DEncoder(tmp_path).pooled_layerwise(texts, [4])[4], atol=1e-6)


def _spearman(first: np.ndarray, second: np.ndarray, gold: list[float]) -> float:
    return 100 * spearmanr((first * second).sum(1), gold).statistic


@pytest.mark.parametrize(("pairs_fixture", "floor"), [("graded_pairs", 85), ("sts_dev", 80)])
def test_spearman_equals_sentence_transformers(
    request: pytest.FixtureRequest, reference_model, minilm_path: Path, pairs_fixture: str, floor: float
) -> None:
    pairs: StsPairs = request.getfixturevalue(pairs_fixture)
    encoder = Matryoshka2DEncoder(minilm_path)
    ours = _spearman(encoder.encode_documents(pairs.first), encoder.encode_documents(pairs.second), pairs.scores)
    theirs = _spearman(
        reference_model.encode(pairs.first, normalize_embeddings=True),
        reference_model.encode(pairs.second, normalize_embeddings=True),
        pairs.scores,
    )
    assert ours > floor and abs(ours - theirs) <= 0.01


TEXTS = ["a short one", "", "   ", "a much longer sentence about the quarterly energy report and its numbers", "ok"]


def _hand_reference(model, folder: Path, texts: list[str], num_layers: int, pooling: str, dimensions: int) -> np.ndarray:
    """Full model, hidden state after `num_layers` layers, pooled, sliced and normalised by hand."""
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(folder)(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        output = model(**tokens, output_hidden_states=True)
        hidden = output.hidden_states[num_layers]
        if hasattr(model, "final_norm") and num_layers < model.config.num_hidden_layers:
            hidden = model.final_norm(hidden)
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "max":
        pooled = (hidden - 1e9 * (1 - mask)).max(1).values
    else:
        pooled = (hidden * mask).sum(1) / mask.sum(1)
    sliced = pooled[:, :dimensions].numpy()
    return sliced / np.linalg.norm(sliced, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("architecture", "pooling", "max_layers"),
    [("bert", "cls", 4), ("distilbert", "mean", 3), ("modernbert", "mean", 4), ("roberta", "cls", 3), ("mpnet", "mean", 3), ("electra", "max", 3)],
)
def test_tiny_models_match_a_hand_computed_reference(
    tmp_path: Path, minilm_path: Path, architecture: str, pooling: str, max_layers: int
) -> None:
    model = build_tiny_model(tmp_path, architecture, minilm_path, pooling=pooling)
    for num_layers in range(1, max_layers + 1):
        encoder = Matryoshka2DEncoder(tmp_path, num_layers=num_layers, dimensions=16)
        assert encoder.pooling == pooling and encoder.max_layers == max_layers and encoder.max_dimensions == 32
        expected = _hand_reference(model, tmp_path, TEXTS, num_layers, pooling, 16)
        np.testing.assert_allclose(encoder.encode_documents(TEXTS), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("architecture", "count_attribute"),
    [("bert", "num_hidden_layers"), ("distilbert", "n_layers"), ("modernbert", "num_hidden_layers"), ("roberta", "num_hidden_layers"),
     ("mpnet", "num_hidden_layers"), ("electra", "num_hidden_layers")],
)
def test_dropped_layers_are_not_loaded(tmp_path: Path, minilm_path: Path, architecture: str, count_attribute: str) -> None:
    build_tiny_model(tmp_path, architecture, minilm_path, pooling="mean")
    full = Matryoshka2DEncoder(tmp_path)._loaded.model
    cut = Matryoshka2DEncoder(tmp_path, num_layers=1)._loaded.model
    assert getattr(cut.config, count_attribute) == 1
    layer_names = {name.split(".layer")[0] for name in full.state_dict() if "layer" in name}
    assert layer_names  # the architecture has per-layer weights to drop
    assert sum(p.numel() for p in cut.parameters()) < sum(p.numel() for p in full.parameters())
    assert not [name for name in cut.state_dict() if any(f"layer.{i}." in name or f"layers.{i}." in name for i in range(1, 4))]


def test_unsupported_architecture_is_named(tmp_path: Path, minilm_path: Path) -> None:
    build_tiny_model(tmp_path, "gpt2", minilm_path)
    with pytest.raises(ValueError, match="architecture 'gpt2'.*supported: bert"):
        Matryoshka2DEncoder(tmp_path)


def test_several_depths_in_one_pass_equal_separate_runs(minilm_path: Path, sentences: list[str]) -> None:
    texts = sentences[:60]
    full = Matryoshka2DEncoder(minilm_path)
    by_depth = full.encode_layerwise(texts, [1, 3, 6])
    for depth in (1, 3, 6):
        for dimensions in (384, 64):
            separate = Matryoshka2DEncoder(minilm_path, num_layers=depth, dimensions=dimensions).encode_documents(texts)
            np.testing.assert_allclose(truncate_dimensions(by_depth[depth], dimensions), separate, atol=1e-5)


@pytest.mark.parametrize("architecture", ["modernbert", "distilbert"])
def test_several_depths_in_one_pass_on_other_architectures(tmp_path: Path, minilm_path: Path, architecture: str) -> None:
    build_tiny_model(tmp_path, architecture, minilm_path, pooling="cls")
    full = Matryoshka2DEncoder(tmp_path)
    by_depth = full.encode_layerwise(TEXTS, range(1, full.max_layers + 1))
    for depth, vectors in by_depth.items():
        np.testing.assert_allclose(vectors, Matryoshka2DEncoder(tmp_path, num_layers=depth).encode_documents(TEXTS), atol=1e-5)


@pytest.fixture(scope="module")
def encoder(minilm_path: Path) -> Matryoshka2DEncoder:
    return Matryoshka2DEncoder(minilm_path, dimensions=128, batch_size=4)


def test_results_come_back_in_input_order(encoder: Matryoshka2DEncoder, sentences: list[str]) -> None:
    texts = sentences[:23]
    together = encoder.encode_documents(texts)
    one_by_one = np.vstack([encoder.encode_documents([text]) for text in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_prompts_go_to_their_own_side(minilm_path: Path) -> None:
    encoder = Matryoshka2DEncoder(minilm_path, query_prompt="query: ", document_prompt="passage: ")
    np.testing.assert_allclose(encoder.encode_queries(["x"]), encoder.encode(["query: x"]), atol=1e-6)
    np.testing.assert_allclose(encoder.encode_documents(["x"]), encoder.encode(["passage: x"]), atol=1e-6)


def test_sentence_transformers_files_choose_settings_and_arguments_win(tmp_path: Path, minilm_path: Path) -> None:
    build_tiny_model(tmp_path, "bert", minilm_path, pooling="cls", prompts={"query": "q: ", "document": "d: "})
    encoder = Matryoshka2DEncoder(tmp_path)
    assert (encoder.pooling, encoder.max_length, encoder.query_prompt, encoder.document_prompt) == ("cls", 64, "q: ", "d: ")
    explicit = Matryoshka2DEncoder(tmp_path, pooling="max", max_length=16, query_prompt="", document_prompt="doc ")
    assert (explicit.pooling, explicit.max_length, explicit.query_prompt, explicit.document_prompt) == ("max", 16, "", "doc ")
    with pytest.raises(ValueError, match="pooling must be one of cls, mean"):
        Matryoshka2DEncoder(tmp_path, pooling="median")


def test_minilm_properties(minilm_path: Path) -> None:
    encoder = Matryoshka2DEncoder(minilm_path, num_layers=2, dimensions=64)
    assert (encoder.num_layers, encoder.max_layers, encoder.dimensions, encoder.max_dimensions) == (2, 6, 64, 384)
    assert encoder.pooling == "mean" and encoder.model_name == str(minilm_path) and encoder.query_prompt == ""


_HUB_SCRIPT = """
import sys
from mm2d_integrations import Matryoshka2DEncoder
encoder = Matryoshka2DEncoder("mixedbread-ai/mxbai-embed-2d-large-v1", num_layers=2, dimensions=8)
print(encoder.pooling, encoder.max_length, repr(encoder.query_prompt), encoder.encode_queries(["hi"]).shape)
try:
    Matryoshka2DEncoder("someone/not-cached")
except OSError as error:
    print("missing:", type(error).__name__)
"""


def test_hub_id_loads_offline_from_the_cache_with_the_known_model_table(tmp_path: Path, minilm_path: Path) -> None:
    folder = tmp_path / "model"
    build_tiny_model(folder, "bert", minilm_path)  # no sentence-transformers files: the table fills them
    copy_as_hub_cache(folder, tmp_path / "cache", "mixedbread-ai/mxbai-embed-2d-large-v1")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", _HUB_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # The table's max_length 512 is lowered to the 128 positions of the tiny stand-in.
    assert "cls 128 'Represent this sentence for searching relevant passages: ' (1, 8)" in result.stdout
    assert "missing:" in result.stdout


def test_bfloat16_on_request(minilm_path: Path, sentences: list[str]) -> None:
    texts = sentences[:20]
    half = Matryoshka2DEncoder(minilm_path, dtype="bfloat16")
    assert next(half._loaded.model.parameters()).dtype == torch.bfloat16
    full = Matryoshka2DEncoder(minilm_path)
    assert (half.encode_documents(texts) * full.encode_documents(texts)).sum(1).min() > 0.98
    with pytest.raises(ValueError, match="dtype must be one of float32"):
        Matryoshka2DEncoder(minilm_path, dtype="int3")


def test_encoders_share_one_loaded_model_per_configuration(minilm_path: Path) -> None:
    first = Matryoshka2DEncoder(minilm_path, dimensions=64)
    second = Matryoshka2DEncoder(minilm_path, dimensions=128)
    shallow = Matryoshka2DEncoder(minilm_path, num_layers=3)
    assert first._loaded is second._loaded and shallow._loaded is not first._loaded
    assert first.encode_documents(["x"]).shape == (1, 64) and second.encode_documents(["x"]).shape == (1, 128)


def test_threads_get_exactly_the_serial_results(minilm_path: Path, sentences: list[str]) -> None:
    encoder = Matryoshka2DEncoder(minilm_path, batch_size=8)
    chunks = [sentences[i : i + 17] for i in range(0, 136, 17)]
    serial = [encoder.encode_documents(chunk) for chunk in chunks]
    results: dict[int, np.ndarray] = {}

    def work(index: int) -> None:
        results[index] = encoder.encode_documents(chunks[index])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(chunks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, expected in enumerate(serial):
        np.testing.assert_array_equal(results[index], expected)


def test_bf16_precision_stays_close_to_float32(minilm_path: Path, sentences: list[str]) -> None:
    fast = Matryoshka2DEncoder(minilm_path, compute_precision="bf16")
    exact = Matryoshka2DEncoder(minilm_path)
    assert fast.compute_precision == "bf16" and fast._loaded is exact._loaded  # autocast: the same float32 weights
    assert (fast.encode_documents(sentences) * exact.encode_documents(sentences)).sum(1).min() >= 0.999
    with pytest.raises(ValueError, match="compute_precision must be one of float32, bf16, int8, got 'fp8'"):
        Matryoshka2DEncoder(minilm_path, compute_precision="fp8")


def test_bf16_falls_back_with_a_warning_where_the_cpu_lacks_it(minilm_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mm2d_integrations.core.runtime as runtime_module

    monkeypatch.setattr(runtime_module, "bf16_supported", lambda device: False)
    with pytest.warns(UserWarning, match="no native bfloat16 support: compute_precision falls back to float32"):
        encoder = Matryoshka2DEncoder(minilm_path, compute_precision="bf16")
    assert encoder.compute_precision == "float32"


def test_a_cpu_without_bf16_or_vnni_gets_exact_float32(minilm_path: Path, avx2_run: Avx2Run) -> None:
    """Forced for real (tests/conftest.py): oneDNN limited to AVX2 (no bfloat16, no VNNI) and torch's kernels
    to AVX2; the bf16 request falls back, the torch and ONNX backends still give this machine's float32
    vectors, and int8 runs on AVX2 kernels within its quality bar."""
    *exact, int8 = avx2_run.vectors()
    expected = Matryoshka2DEncoder(minilm_path).encode_documents(avx2_run.texts)
    for vectors in exact:
        assert float((vectors * expected).sum(1).min()) >= 0.99999
    assert 0.99 <= float((int8 * expected).sum(1).min()) < 0.99999


def test_token_budget_batches() -> None:
    from mm2d_integrations.core.encoder import token_budget_batches

    lengths = [5, 100, 3, 100, 50, 4]
    assert token_budget_batches(lengths, 32, None) == [[1, 3, 4, 0, 5, 2]]
    assert token_budget_batches(lengths, 2, None) == [[1, 3], [4, 0], [5, 2]]
    assert token_budget_batches(lengths, 32, 200) == [[1, 3], [4, 0, 5, 2]]
    assert token_budget_batches(lengths, 32, 10) == [[1], [3], [4], [0, 5], [2]]  # a text longer than the budget goes alone
    assert token_budget_batches([], 4, 100) == []


def test_token_budget_gives_the_same_vectors(minilm_path: Path, sentences: list[str]) -> None:
    texts = sentences[:50] + ["a long text " * 80]
    budget = Matryoshka2DEncoder(minilm_path, max_batch_tokens=300)
    np.testing.assert_allclose(budget.encode_documents(texts), Matryoshka2DEncoder(minilm_path).encode_documents(texts), atol=1e-5)


def test_truncate_dimensions_leaves_its_input_alone() -> None:
    vectors = np.array([[3.0, 4.0, 12.0]], dtype=np.float32)
    np.testing.assert_allclose(truncate_dimensions(vectors, 2), [[0.6, 0.8]])
    np.testing.assert_array_equal(vectors, [[3.0, 4.0, 12.0]])


def test_with_dimensions_shares_the_model_and_narrows_the_vectors(encoder: Matryoshka2DEncoder) -> None:
    narrow = encoder.with_dimensions(16)
    assert narrow._loaded is encoder._loaded and (narrow.dimensions, encoder.dimensions) == (16, 128)
    np.testing.assert_allclose(narrow.encode_documents(["x"]), truncate_dimensions(encoder.encode_documents(["x"]), 16), atol=1e-6)
    with pytest.raises(ValueError, match=r"dimensions must be an int in \[1, 128\]"):
        encoder.with_dimensions(129)
