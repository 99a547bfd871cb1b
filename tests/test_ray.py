"""Ray: `embed_dataset` and `mm2d index --ray`, on a real local Ray cluster (2 CPUs, started once for the
module) writing into a real `chroma run` on loopback."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import ray
import ray.data

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.cli import main
from mm2d_integrations.rag import indexer
from mm2d_integrations.rag.pipeline import Store, index
from mm2d_integrations.rag.ray_indexer import index_on_ray
from mm2d_integrations.ray import embed_dataset
from mm2d_integrations.retrieval.documents import Chunking
from mm2d_integrations.retrieval.store_rules import StoreUnavailable
from mm2d_integrations.samples import SAMPLE_DOCS
from tests.corpus import indexed_chunk_ids
from tests.test_chroma import ChromaServer, _free_port
from tests.test_hostile_input import hostile_folder, run_cli
from tests.test_langchain import MINILM
from tests.tiny_models import build_tiny_model

WORDS = (
    "turbine grid battery storage inverter outage substation tariff forecast demand solar wind hydrogen pipeline meter "
    "maintenance contract supplier warranty audit safety incident report budget quarter team policy customer ticket"
).split()


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    chroma = ChromaServer(tmp_path_factory.mktemp("chroma-server"))
    chroma.start()
    yield chroma
    chroma.stop()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> str:
    folder = tmp_path_factory.mktemp("tiny-bert")
    build_tiny_model(folder, "bert", minilm_path, pooling="mean")
    return str(folder)


SMALL_CHUNKS = Chunking(size=200, overlap=20)  # characters: cheap to cut, so that the tests spend their time on Ray


@pytest.fixture(scope="module")
def generated_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 files of made-up paragraphs: about 2000 chunks of SMALL_CHUNKS."""
    folder = tmp_path_factory.mktemp("generated")
    rng = random.Random(0)
    for number in range(100):
        paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 40))) + "." for _ in range(14)]
        (folder / f"team{number % 6}").mkdir(exist_ok=True)
        (folder / f"team{number % 6}" / f"note{number:03d}.md").write_text("\n\n".join(paragraphs))
    return folder


@pytest.fixture(scope="module")
def clean(server: ChromaServer, tiny_model: str, generated_docs: Path) -> Store:
    """The generated folder indexed by one process, undisturbed: what every faulty run must end with."""
    store = _server_store(server, "clean", tiny_model)
    index(generated_docs, store, chunking=SMALL_CHUNKS)
    return store


def _server_store(server: ChromaServer, collection: str, model: str, **fields: Any) -> Store:
    return Store(collection=collection, host="127.0.0.1", port=server.port, model=model, **fields)


def _records(store: Store, name: str | None = None) -> dict[str, tuple[str | None, dict, np.ndarray]]:
    got = store.client().get_collection(name or store.collection).get(include=["documents", "metadatas", "embeddings"])
    return {key: (text, metadata, np.asarray(vector)) for key, text, metadata, vector in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"])}


def _assert_same_collection(left: Store, right: Store, name_left: str | None = None, name_right: str | None = None) -> int:
    one, two = _records(left, name_left), _records(right, name_right)
    assert sorted(one) == sorted(two)
    for key, (text, metadata, vector) in one.items():
        assert (text, metadata) == two[key][:2], key
        np.testing.assert_allclose(vector, two[key][2], atol=1e-5)
    return len(one)


def test_embed_dataset_gives_the_cut_encoders_vectors(cluster: None) -> None:
    texts = [f"Report {number}: the {WORDS[number % len(WORDS)]} was checked." for number in range(40)]
    encoder = Matryoshka2DEncoder(MINILM, num_layers=3, dimensions=128)
    dataset = ray.data.from_items([{"text": text, "row": number} for number, text in enumerate(texts)])
    embedded = embed_dataset(dataset, MINILM, num_layers=3, dimensions=128, kind="queries", actors=1, batch_size=16).take_all()
    got = {row["row"]: row["embedding"] for row in embedded}
    np.testing.assert_allclose(np.stack([got[number] for number in range(len(texts))]), encoder.encode_queries(texts), atol=1e-5)
    with pytest.raises(ValueError, match="text_column 'body' is not a column"):
        embed_dataset(dataset, encoder=encoder, text_column="body")


def test_index_on_ray_builds_the_single_process_collection(cluster: None, server: ChromaServer, capsys: pytest.CaptureFixture[str]) -> None:
    """The real MiniLM, the sample corpus and its shortlist collection; the command line joins the running Ray."""
    common = ["--chroma-host", "127.0.0.1", "--chroma-port", str(server.port), "--model", MINILM, "--shortlist-dims", "64"]
    assert main(["index", str(SAMPLE_DOCS), "--collection", "single", *common]) == 0
    single_report = capsys.readouterr().out
    assert main(["index", str(SAMPLE_DOCS), "--collection", "spread", "--ray", "--ray-actors", "2", *common]) == 0
    assert capsys.readouterr().out == single_report
    single, spread = _server_store(server, "single", MINILM), _server_store(server, "spread", MINILM)
    assert f"{_assert_same_collection(single, spread)} chunks: " in single_report
    assert _assert_same_collection(single, spread, "single-short64", "spread-short64") > 0


def _when_written(store: Store, action: Callable[[], None]) -> Callable[[], None]:
    """A watcher: `action()` once the collection holds its first vectors."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if store.client().get_collection(store.collection).count() > 0:
                    action()
                    return
            except Exception:
                pass  # not created yet
            time.sleep(0.05)

    return watch


def _run_with(watch: Callable[[], None], work: Callable[[], Any]) -> Any:
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        return work()
    finally:
        watcher.join(timeout=60)


def _embedding_actors() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any("IndexFiles" in part for part in process.info["cmdline"] or ()):
            found.append(process)
    return found


def test_an_actor_killed_midway_is_restarted_and_the_index_is_exact_then_reindexing_embeds_only_what_changed(
    cluster: None, server: ChromaServer, tiny_model: str, generated_docs: Path, clean: Store, tmp_path: Path
) -> None:
    folder = shutil.copytree(generated_docs, tmp_path / "docs")
    store = _server_store(server, "killed", tiny_model)
    held_when_killed: list[int] = []

    def kill_one_actor() -> None:
        actor = _embedding_actors()[0]
        held_when_killed.append(store.client().get_collection("killed").count())
        os.kill(actor.pid, signal.SIGKILL)

    report = _run_with(_when_written(store, kill_one_actor), lambda: index_on_ray(folder, store, chunking=SMALL_CHUNKS, actors=2))
    expected = _assert_same_collection(clean, store)
    assert held_when_killed and held_when_killed[0] < expected // 2  # killed early in the job
    assert expected > 1500 and report.chunks == report.added == expected
    assert store.client().get_collection("killed").count() == expected

    notes = sorted(folder.rglob("*.md"))
    notes[0].write_text(notes[0].read_text() + "\n\nA paragraph added since the first run.")
    notes[1].unlink()
    (folder / "new.md").write_text("A new note about the turbine maintenance schedule.")
    (folder / "team0" / "binary.md").write_bytes(b"\x00\x01 not text")  # skipped by an actor
    (folder / "diagram.png").write_bytes(b"png")  # skipped by the listing
    second = index_on_ray(folder, store, chunking=SMALL_CHUNKS, actors=1)
    changed = _server_store(server, "changed", tiny_model)
    expected = index(folder, changed, chunking=SMALL_CHUNKS)
    assert (second.files, second.chunks, second.skipped) == (expected.files, expected.chunks, expected.skipped) and len(expected.skipped) == 2
    assert 0 < second.added < 40 and second.removed > 5 and second.unchanged == second.chunks - second.added
    _assert_same_collection(changed, store)


def test_a_chroma_server_lost_midway_is_retried_then_an_error_and_the_next_run_completes(
    cluster: None, tmp_path: Path, tiny_model: str, generated_docs: Path, clean: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(indexer, "WRITE_TRIES", 3)
    monkeypatch.setattr(indexer, "WRITE_BACKOFF_S", 0.2)
    lost = ChromaServer(tmp_path / "lost")
    lost.start()
    store = _server_store(lost, "lost", tiny_model)

    def kill_server() -> None:
        assert lost.process is not None
        lost.process.kill()
        lost.process.wait()
        lost.process = None

    try:
        with pytest.raises(StoreUnavailable, match=r"stopped answering while writing chunks .*3 tries.*run the same command again"):
            _run_with(_when_written(store, kill_server), lambda: index_on_ray(generated_docs, store, chunking=SMALL_CHUNKS, actors=1))
        lost.start()
        partial = indexer.stored_ids(store.client().get_collection("lost"))
        expected = indexer.stored_ids(clean.client().get_collection("clean"))
        assert 0 < len(partial) < len(expected)
        report = index_on_ray(generated_docs, store, chunking=SMALL_CHUNKS, actors=1)
        assert report.added == len(expected) - len(partial)
        assert _assert_same_collection(clean, store) == len(expected) == store.client().get_collection("lost").count()
    finally:
        lost.stop()


def test_a_bad_or_silent_ray_address_is_one_line_and_its_status(cluster: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed address is bad input (2); one where nothing answers is a cluster that cannot be used
    now (1), said at once (Ray itself would retry for minutes). Both before anything is written."""
    command = ["index", "--persist-dir", str(tmp_path / "chroma"), "--ray"]
    for folder, address, status, message in (
        (SAMPLE_DOCS, "not an address", 2, "address must be a Ray address: local, auto, HOST:PORT or ray://HOST:PORT"),
        (SAMPLE_DOCS, f"ray://127.0.0.1:{_free_port()}", 1, "no Ray cluster answers at ray://127.0.0.1:"),
        (tmp_path / "missing", "local", 2, "document folder"),  # listed on the cluster, said as here
    ):
        started = time.monotonic()
        assert main([*command, address, str(folder)]) == status
        err = capsys.readouterr().err
        assert err.startswith(f"mm2d: error: {message}") and err.count("\n") == 1
        assert status == 2 or time.monotonic() - started < 10
    assert not (tmp_path / "chroma").exists()


def test_a_run_killed_whole_is_completed_by_the_next(cluster: None, server: ChromaServer, tiny_model: str, generated_docs: Path) -> None:
    """`mm2d index --ray HOST:PORT` (joining this module's cluster) killed with -9 once it has written;
    the next run embeds only what is missing and ends with exactly the folder's chunks."""
    store = _server_store(server, "whole", tiny_model)
    address = ray.get_runtime_context().gcs_address
    command = [
        sys.executable, "-m", "mm2d_integrations.cli", "index", str(generated_docs), "--ray", address, "--ray-actors", "1", "--model", tiny_model,
        "--chroma-host", "127.0.0.1", "--chroma-port", str(server.port), "--collection", "whole",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        _when_written(store, lambda: process.send_signal(signal.SIGKILL))()
        assert process.wait(timeout=120) == -signal.SIGKILL
    finally:
        process.kill()
    partial = indexer.stored_ids(store.client().get_collection("whole"))
    expected = indexed_chunk_ids(generated_docs, tiny_model)
    assert 0 < len(partial) < len(expected)
    report = index_on_ray(generated_docs, store, actors=1)
    assert report.added == len(expected) - len(partial) and report.unchanged == len(partial)
    collection = store.client().get_collection("whole")
    assert indexer.stored_ids(collection) == expected and collection.count() == len(expected)


def test_index_on_ray_lists_what_is_not_a_regular_file_as_skipped_and_indexes_the_rest(cluster: None, tiny_model: str, tmp_path: Path) -> None:
    """A FIFO once hung an actor for ever; a link loop was a traceback. The run joins this module's cluster."""
    folder = Path(tempfile.mkdtemp(prefix="mm2d-"))  # short enough a path for a Unix socket
    try:
        expected = hostile_folder(folder, ["fifo.txt", "sock.txt", "x.txt"])
        address = ray.get_runtime_context().gcs_address
        done = run_cli("index", str(folder), "--ray", address, "--ray-actors", "1", "--model", tiny_model, "--persist-dir", str(tmp_path / "chroma"))
    finally:
        shutil.rmtree(folder)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("2 files, 2 chunks: 2 embedded and added")
    assert all(f"skipped {path}: {why}" in done.stdout for path, why in expected.items()), done.stdout
