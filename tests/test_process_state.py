"""Nothing a process keeps grows without bound, and importing the package starts nothing."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from pathlib import Path

import pytest

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.core import int8, loading
from mm2d_integrations.core.encoder import KEPT_ENCODERS
from tests.tiny_models import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    folder = tmp_path_factory.mktemp("tiny-state")
    build_tiny_model(folder, "bert", minilm_path)
    return folder


def test_importing_the_package_and_its_adapters_makes_no_thread_pool(tiny: Path) -> None:
    """The async methods' pool is made on their first call, then reused."""
    script = f"""
import asyncio, gc
from concurrent.futures import ThreadPoolExecutor
import mm2d_integrations, mm2d_integrations.chroma, mm2d_integrations.langchain, mm2d_integrations.llama_index

def pools():
    return sum(isinstance(kept, ThreadPoolExecutor) and kept._thread_name_prefix.startswith("mm2d") for kept in gc.get_objects())

print(pools())
encoder = mm2d_integrations.Matryoshka2DEncoder({str(tiny)!r})
for _ in range(2):
    asyncio.run(encoder.aencode_documents(["a text"]))
print(pools())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "1"]


def test_encoders_kept_for_recipes_are_bounded_and_the_oldest_is_freed(tiny: Path) -> None:
    recipes = [Matryoshka2DEncoder(tiny, dimensions=32 - index).recipe for index in range(KEPT_ENCODERS + 1)]
    gc.collect()
    first = recipes[0].build()
    assert recipes[0].build() is first  # kept: a worker that receives it again builds nothing
    oldest = weakref.ref(first)
    del first
    for recipe in recipes[1:]:
        recipe.build()
    gc.collect()
    assert oldest() is None
    assert recipes[-1].build() is recipes[-1].build()


def test_a_loaded_model_leaves_the_cache_with_its_last_encoder(tiny: Path) -> None:
    encoder = Matryoshka2DEncoder(tiny, num_layers=3, dimensions=8)
    loaded = weakref.ref(encoder.loaded_model)
    assert any(kept is loaded() for kept in loading._cache.values())
    twin = Matryoshka2DEncoder(tiny, num_layers=3, dimensions=16)
    assert twin.loaded_model is loaded()  # shared while both live
    del encoder, twin
    gc.collect()
    assert loaded() is None
    assert not any(key[3] == 3 and str(tiny) in str(key[0]) for key in loading._cache.keys())


def test_int8_keeps_one_product_per_step_whatever_the_models(tiny: Path, minilm_path: Path) -> None:
    for model, depth in ((tiny, 2), (tiny, 4), (minilm_path, 1)):
        Matryoshka2DEncoder(model, num_layers=depth, compute_precision="int8").encode_documents(["a text", "another"])
    assert set(int8._fused) <= {"levels", *int8._STEPS}
