"""Their processes: adapters and the Chroma embedding function pickle as their configuration (never the
model or its locks), so they can be handed to multiprocessing, Ray, Spark or LlamaIndex's
IngestionPipeline(num_workers=...); the receiving process loads the model on first use, once."""

from __future__ import annotations

import gc
import os
import pickle
import shutil
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.chroma import Matryoshka2DEmbeddingFunction
from mm2d_integrations.core.encoder import EncoderRecipe
from mm2d_integrations.langchain import Matryoshka2DEmbeddings
from mm2d_integrations.llama_index import Matryoshka2DEmbedding
from tests.test_langchain import MINILM
from tests.test_options import _pickle_only_model
from tests.tiny_models import build_tiny_model

TEXTS = ["a battery for the car", "the thermostat is set to 19 degrees"]


def _embed(embedder: Any) -> np.ndarray:
    """Documents, then a query, through the embedder's own interface."""
    if isinstance(embedder, Matryoshka2DEmbeddings):
        return np.array([*embedder.embed_documents(TEXTS), embedder.embed_query(TEXTS[0])])
    if isinstance(embedder, Matryoshka2DEmbedding):
        return np.array([*embedder.get_text_embedding_batch(TEXTS), embedder.get_query_embedding(TEXTS[0])])
    return np.array([*embedder(TEXTS), *embedder.embed_query(TEXTS[:1])])


def _embedders(**options: Any) -> list[Any]:
    return [
        Matryoshka2DEmbeddings(model=MINILM, **options),
        Matryoshka2DEmbedding(model_name=MINILM, **options),
        Matryoshka2DEmbeddingFunction(MINILM, **options),
    ]


def test_pickles_by_configuration_and_loads_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[EncoderRecipe] = []
    original = EncoderRecipe.build
    monkeypatch.setattr(EncoderRecipe, "build", lambda recipe: builds.append(recipe) or original(recipe))
    for embedder in _embedders(num_layers=3, dimensions=64, query_prompt="query: "):
        data = pickle.dumps(embedder)
        assert len(data) < 4096  # the configuration, not the model
        restored = pickle.loads(data)
        assert builds == []  # nothing loads until vectors are asked for
        np.testing.assert_allclose(_embed(restored), _embed(embedder), atol=1e-6)
        assert len(builds) == 1 and restored.encoder.options == embedder.encoder.options
        assert restored.encoder is pickle.loads(data).encoder  # once per process
        builds.clear()


def test_a_wrapped_encoder_rebuilds_with_every_option(tmp_path: Path) -> None:
    """allow_pickle, and options that are no field of the adapter (LlamaIndex's batch_size), travel too."""
    encoder = Matryoshka2DEncoder(_pickle_only_model(tmp_path / "pickle", Path(MINILM)), allow_pickle=True, num_layers=2, max_batch_tokens=300)
    for embedder in (Matryoshka2DEmbeddings.from_encoder(encoder), Matryoshka2DEmbedding.from_encoder(encoder),
                     Matryoshka2DEmbeddingFunction(encoder=encoder)):
        restored = pickle.loads(pickle.dumps(embedder))
        assert restored.encoder.options == encoder.options and restored.encoder.options.allow_pickle
        np.testing.assert_allclose(_embed(restored), _embed(embedder), atol=1e-6)
    odd = Matryoshka2DEncoder(MINILM, batch_size=7, dimensions=32)
    assert pickle.loads(pickle.dumps(Matryoshka2DEmbedding.from_encoder(odd))).encoder.options == odd.options


def test_a_process_with_other_weights_at_the_same_path_refuses(tmp_path: Path) -> None:
    build_tiny_model(tmp_path / "model", "bert", Path(MINILM), pooling="mean", seed=0)
    data = pickle.dumps(Matryoshka2DEmbeddings(model=tmp_path / "model"))
    gc.collect()  # the model loaded here is gone, as it would be in another process
    shutil.rmtree(tmp_path / "model")
    build_tiny_model(tmp_path / "model", "bert", Path(MINILM), pooling="mean", seed=1)
    restored = pickle.loads(data)
    with pytest.raises(ValueError, match="another embedding space.*weights"):
        restored.embed_query("x")


_LOADS = 0


def _count_loads() -> None:
    """Pool initializer: count the models this worker loads."""
    from mm2d_integrations.core import loading

    original = loading._load

    def counted(*args: Any) -> Any:
        global _LOADS
        _LOADS += 1
        return original(*args)

    loading._load = counted


def _in_worker(embedder: Any) -> tuple[int, np.ndarray, int]:
    return os.getpid(), _embed(embedder), _LOADS


def test_spawned_workers_give_the_same_vectors_and_load_once() -> None:
    embedders = _embedders(num_layers=3, dimensions=64, query_prompt="query: ")
    expected = [_embed(embedder) for embedder in embedders]
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn"), initializer=_count_loads) as pool:
        results = list(pool.map(_in_worker, embedders * 2))
    for (pid, vectors, loads), wanted in zip(results, expected * 2):
        assert pid != os.getpid() and loads == 1
        np.testing.assert_allclose(vectors, wanted, atol=1e-6)
