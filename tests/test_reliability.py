"""The bad-input table (docs/reliability.md), crash-safe indexing, and concurrency."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.chroma import chroma_client
from mm2d_integrations.langchain import Matryoshka2DEmbeddings
from mm2d_integrations.rag.indexer import stored_ids
from mm2d_integrations.samples import SAMPLE_DOCS
from tests.corpus import indexed_chunk_ids
from tests.test_langchain import MINILM, TICK, with_ticker
from tests.tiny_models import build_tiny_model


@pytest.fixture(scope="module")
def encoder() -> Matryoshka2DEncoder:
    return Matryoshka2DEncoder(MINILM, dimensions=128, batch_size=4)


@pytest.fixture(scope="module")
def embeddings() -> Matryoshka2DEmbeddings:
    return Matryoshka2DEmbeddings(model=MINILM, dimensions=128, batch_size=4)


def _unit_rows(vectors: np.ndarray, count: int) -> None:
    assert vectors.shape == (count, 128) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


# texts given -> the error (type, message) or a check of the documented result
TEXT_ROWS: dict[str, tuple[Any, Any]] = {
    "None instead of a list": (None, (TypeError, "texts must be a list of str, got NoneType")),
    "a str instead of a list": ("one string", (TypeError, "texts must be a list of str, got str")),
    "None item": (["ok", None], (TypeError, r"texts\[1\] must be str, got NoneType")),
    "int item": (["ok", 3], (TypeError, r"texts\[1\] must be str, got int")),
    "bytes item": ([b"bytes"], (TypeError, r"texts\[0\] must be str, got bytes")),
    "dict item": ([{"a": 1}], (TypeError, r"texts\[0\] must be str, got dict")),
    "empty list": ([], lambda vectors: vectors.shape == (0, 128)),
    "empty and whitespace strings": (["", "   ", "\n\t"], lambda vectors: _unit_rows(vectors, 3) or True),
    "control characters": (["\x00\x07 bell \x1b[31m"], lambda vectors: _unit_rows(vectors, 1) or True),
    "emoji and CJK": (["emoji 🚀🔋 和 CJK 漢字 テスト"], lambda vectors: _unit_rows(vectors, 1) or True),
}


@pytest.mark.parametrize("row", list(TEXT_ROWS))
@pytest.mark.parametrize("via", ["encoder", "langchain"])
def test_bad_texts(row: str, via: str, encoder: Matryoshka2DEncoder, embeddings: Matryoshka2DEmbeddings) -> None:
    texts, expected = TEXT_ROWS[row]
    embed: Callable[[Any], np.ndarray] = (
        encoder.encode_documents if via == "encoder" else lambda given: np.array(embeddings.embed_documents(given)).reshape(-1, 128)
    )
    if isinstance(expected, tuple):
        with pytest.raises(expected[0], match=expected[1]):
            embed(texts)
    else:
        assert expected(embed(texts))
    _unit_rows(embed(["the process still works"]), 1)


def test_lone_surrogates_become_the_replacement_character(encoder: Matryoshka2DEncoder) -> None:
    with_surrogate, replaced = encoder.encode_documents(["lone \ud800 surrogate", "lone \ufffd surrogate"])
    np.testing.assert_allclose(with_surrogate, replaced, atol=1e-6)


def test_a_1_mb_string_is_truncated_to_max_length(encoder: Matryoshka2DEncoder) -> None:
    assert encoder.max_length == 256
    head = "word " * 300
    long_vector, head_vector = encoder.encode_documents([head + "tail " * 200_000, head])
    np.testing.assert_allclose(long_vector, head_vector, atol=1e-6)


@pytest.mark.parametrize("num_layers", [0, -1, 1.5, "3", 7, True])
def test_num_layers_out_of_range_names_the_range(num_layers: object) -> None:
    with pytest.raises(ValueError, match=r"num_layers must be an int in \[1, 6\]"):
        Matryoshka2DEncoder(MINILM, num_layers=num_layers)  # type: ignore[arg-type]


@pytest.mark.parametrize("dimensions", [0, 385, -3, 2.0])
def test_dimensions_out_of_range_names_the_range(dimensions: object) -> None:
    with pytest.raises(ValueError, match=r"dimensions must be an int in \[1, 384\]"):
        Matryoshka2DEncoder(MINILM, dimensions=dimensions)  # type: ignore[arg-type]


def test_pickle_only_checkpoint_is_refused_unless_allowed(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path, "bert", Path(MINILM), pooling="cls")
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="only pickle weights.*allow_pickle=True"):
        Matryoshka2DEncoder(tmp_path)
    assert Matryoshka2DEncoder(tmp_path, allow_pickle=True).encode_documents(["x"]).shape == (1, 32)


def test_remote_code_is_refused_by_default(tmp_path: Path) -> None:
    build_tiny_model(tmp_path, "bert", Path(MINILM))
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ValueError, match="needs its own Python code.*trust_remote_code=True"):
        Matryoshka2DEncoder(tmp_path)


def test_missing_model_and_folder_without_weights(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Matryoshka2DEncoder(tmp_path / "nowhere")
    build_tiny_model(tmp_path, "bert", Path(MINILM))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        Matryoshka2DEncoder(tmp_path)


def test_eight_threads_of_mixed_calls_get_exactly_the_serial_results(embeddings: Matryoshka2DEmbeddings) -> None:
    calls = [("query", f"question number {i} about batteries") if i % 3 else ("documents", [f"doc {i}", f"another text {i * 7}"]) for i in range(100)]

    def run(call: tuple[str, Any]) -> Any:
        kind, payload = call
        return embeddings.embed_query(payload) if kind == "query" else embeddings.embed_documents(payload)

    serial = [run(call) for call in calls]
    results: dict[int, list[Any]] = {}

    def worker(thread: int) -> None:
        results[thread] = [run(call) for call in calls]

    threads = [threading.Thread(target=worker, args=(thread,)) for thread in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[thread] == serial for thread in range(8))


async def test_a_hundred_concurrent_async_queries_leave_the_event_loop_free(embeddings: Matryoshka2DEmbeddings) -> None:
    """Judged by how often the loop turned over the whole run, not by its longest pause: a full garbage
    collection of this process's heap late in the suite stops every thread for most of a second."""
    vectors, ticks, elapsed = await with_ticker(asyncio.gather(*(embeddings.aembed_query(f"question {i}") for i in range(100))))
    assert vectors[42] == embeddings.embed_query("question 42") and len(vectors) == 100
    assert ticks >= elapsed / TICK / 4  # the loop kept turning while the model worked


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130)], ids=["kill -9", "Ctrl-C"])
def test_indexing_stopped_midway_is_completed_by_the_next_run(tmp_path: Path, stop: signal.Signals, status: int) -> None:
    """kill -9 or Ctrl-C (which exits 130 with one line) once a first batch is written; the same
    command again embeds only what is missing and leaves exactly the folder's chunks."""
    folder = tmp_path / "docs"
    for copy in range(2):
        shutil.copytree(SAMPLE_DOCS, folder / f"copy{copy}")
    persist = tmp_path / "chroma"
    command = [sys.executable, "-m", "mm2d_integrations.cli", "index", str(folder), "--persist-dir", str(persist), "--model", MINILM, "--verbose"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    expected = indexed_chunk_ids(folder, MINILM)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = stop_when(process, rb"\| [1-9][0-9]*/%d " % len(expected), stop)  # the progress bar shows a first batch written
    assert process.wait(timeout=120) == status
    if stop == signal.SIGINT:
        assert b"interrupted" in err and b"Traceback" not in err
    partial = stored_ids(chroma_client(persist).get_collection("mm2d"))
    assert 0 < len(partial) < len(expected) == 174 and partial <= expected
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    collection = chroma_client(persist).get_collection("mm2d")
    assert stored_ids(collection) == expected and collection.count() == len(expected)
    assert f"{len(expected) - len(partial)} embedded and added" in rerun.stdout


def stop_when(process: subprocess.Popen[bytes], pattern: bytes, stop: signal.Signals) -> bytes:
    """Send `stop` once `pattern` appears on the process's stderr; all it wrote to stderr."""
    seen = b""
    while not re.search(pattern, seen):
        character = process.stderr.read(1)  # type: ignore[union-attr]
        assert character, f"the command ended before it could be stopped: {seen[-500:]!r}"
        seen += character
    process.send_signal(stop)
    return seen + process.stderr.read()  # type: ignore[union-attr]
