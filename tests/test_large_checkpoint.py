"""The stand-in for mixedbread-ai/mxbai-embed-2d-large-v1 that benchmarks/large_checkpoint.py writes,
at reduced width: the folder is shaped as the real one (float16 safetensors, CLS pooling, no
Normalize, a query prompt) and this package embeds it as sentence-transformers does, at every depth,
float32 on both sides."""

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
from mm2d_integrations.core.checkpoint import MXBAI_QUERY_PROMPT

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "large_checkpoint.py"
LAYERS = 4


@pytest.fixture(scope="module")
def large_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The script's folder at hidden 64, 4 layers (every file as at full size, the weights smaller)."""
    folder = tmp_path_factory.mktemp("large") / "mxbai-shaped"
    subprocess.run(
        [sys.executable, str(SCRIPT), str(folder), "--num-layers", str(LAYERS), "--hidden-size", "64", "--heads", "4", "--intermediate-size", "256"],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return folder


@pytest.fixture(scope="module")
def texts(sentences: list[str]) -> list[str]:
    """Sentences of mixed length and one text past the 512 tokens both sides truncate to."""
    return [*sentences[:40], " ".join(sentences[:120])]


def test_folder_is_shaped_like_the_target(large_folder: Path) -> None:
    from safetensors import safe_open

    config = json.loads((large_folder / "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and config["dtype"] == "float16"
    assert config["max_position_embeddings"] == 512
    with safe_open(str(large_folder / "model.safetensors"), "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"F16"}
    modules = json.loads((large_folder / "modules.json").read_text())
    assert [module["type"].rsplit(".", 1)[-1] for module in modules] == ["Transformer", "Pooling"]  # no Normalize
    encoder = Matryoshka2DEncoder(large_folder)
    assert (encoder.pooling, encoder.query_prompt, encoder.document_prompt, encoder.max_length) == ("cls", MXBAI_QUERY_PROMPT, "", 512)
    assert encoder.max_layers == LAYERS and not encoder.loaded_model.settings.normalized
    assert {parameter.dtype for parameter in encoder.loaded_model.model.parameters()} == {torch.float32}


def test_sentence_transformers_loads_it_in_float16_by_default(large_folder: Path) -> None:
    """The baseline a user of LangChain's or LlamaIndex's Hugging Face embeddings gets on a CPU
    (transformers 5 keeps the stored dtype), which the benchmark's first row measures."""
    from sentence_transformers import SentenceTransformer

    assert {parameter.dtype for parameter in SentenceTransformer(str(large_folder), device="cpu").parameters()} == {torch.float16}


@pytest.mark.parametrize("depth", range(1, LAYERS + 1))
def test_embeds_as_sentence_transformers_at_every_depth(large_folder: Path, texts: list[str], depth: int) -> None:
    from sentence_transformers import SentenceTransformer

    # sentence-transformers cut by its config: the layers past `depth` are never built
    theirs = SentenceTransformer(
        str(large_folder), device="cpu", model_kwargs={"dtype": torch.float32}, config_kwargs={"num_hidden_layers": depth}
    )
    assert len(theirs[0].auto_model.encoder.layer) == depth
    documents, queries = theirs.encode(texts), theirs.encode(texts, prompt_name="query")
    cut = Matryoshka2DEncoder(large_folder, num_layers=depth, normalize=False)
    np.testing.assert_allclose(cut.encode_documents(texts), documents, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cut.encode_queries(texts), queries, rtol=1e-4, atol=1e-5)
    # one pass of the whole model read off at this depth gives the same
    full = Matryoshka2DEncoder(large_folder, normalize=False)
    np.testing.assert_allclose(full.encode_layerwise(texts, [depth, LAYERS])[depth], documents, rtol=1e-4, atol=1e-5)
