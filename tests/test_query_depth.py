"""Shallow queries against deep documents (`query_num_layers`): served by one loaded model, in the
encoder, both adapters, Chroma and the command line, only where the model declares the depths share
one embedding space (exit heads from `mm2d adapt`), refused elsewhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from mm2d_integrations import EncoderOptions, Matryoshka2DEncoder
from mm2d_integrations.chroma import (
    FINGERPRINT_KEY,
    EmbeddingSpaceMismatch,
    Matryoshka2DEmbeddingFunction,
    chroma_client,
    open_collection,
)
from mm2d_integrations.cli import main
from mm2d_integrations.core.checkpoint import SHARED_SPACE_DEPTHS
from mm2d_integrations.rag.generators import Answer, unique_sources
from mm2d_integrations.samples import SAMPLE_DOCS
from mm2d_integrations.training.adapt import adapt, read_corpus
from tests.corpus import DOCUMENTS, QUESTIONS
from tests.tiny_models import build_tiny_model

SENTENCES = [f"sentence {index} is about {topic}" for index in range(12) for topic in ("heat pumps", "travel", "payroll")]
REFUSED = r"query_num_layers=\d with num_layers=\d: model .* does not declare that these depths share one embedding space"


@pytest.fixture(scope="module")
def adapted(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """A tiny random model (4 layers) with exit heads at 1 and 2 layers, none at 3."""
    base = tmp_path_factory.mktemp("tiny")
    build_tiny_model(base, "bert", minilm_path, pooling="mean")
    out = tmp_path_factory.mktemp("adapted") / "tiny"
    adapt(base, SENTENCES, out, layers=[1, 2], exit_layers=[], method="ridge")
    return out


@pytest.fixture(scope="module")
def adapted_minilm(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """MiniLM with an exit head at 2 layers, learned on the sample corpus's chunks (as a user would)."""
    out = tmp_path_factory.mktemp("adapted") / "minilm"
    adapt(minilm_path, read_corpus(SAMPLE_DOCS), out, layers=[2], method="ridge")
    return out


def test_documents_at_full_depth_queries_shallow_from_one_loaded_model(adapted: Path) -> None:
    encoder = Matryoshka2DEncoder(adapted, query_num_layers=2)
    full, shallow = Matryoshka2DEncoder(adapted), Matryoshka2DEncoder(adapted, num_layers=2)
    assert (encoder.num_layers, encoder.query_num_layers, encoder.shared_space_depths) == (4, 2, {1, 2, 4})
    np.testing.assert_array_equal(encoder.encode_documents(SENTENCES[:5]), full.encode_documents(SENTENCES[:5]))
    np.testing.assert_allclose(encoder.encode_queries(SENTENCES[:5]), shallow.encode_queries(SENTENCES[:5]), atol=1e-6)
    assert encoder.transformer_layers is full.transformer_layers  # one model, loaded once, serves both depths
    ran: list[int] = []
    hooks = [layer.register_forward_hook(lambda *_, index=index: ran.append(index)) for index, layer in enumerate(encoder.transformer_layers)]
    try:
        encoder.encode_queries(["one question"])  # queries run their 2 layers only: that is what makes them faster
        assert ran == [0, 1]
        encoder.encode_documents(["one document"])
        assert ran == [0, 1, 0, 1, 2, 3]
    finally:
        for hook in hooks:
            hook.remove()
    assert len(encoder.transformer_layers) == 4
    assert encoder.fingerprint == full.fingerprint  # the documents' space
    assert encoder.options.query_num_layers == 2 and full.options.query_num_layers is None
    assert "query_num_layers=2" in repr(encoder)
    # Queries deeper than documents: the deeper depth is loaded.
    deeper = Matryoshka2DEncoder(adapted, num_layers=1, query_num_layers=4)
    assert len(deeper.transformer_layers) == 4 and deeper.fingerprint == Matryoshka2DEncoder(adapted, num_layers=1).fingerprint
    np.testing.assert_array_equal(deeper.encode_queries(SENTENCES[:3]), full.encode_queries(SENTENCES[:3]))


def test_a_query_depth_is_refused_where_the_model_does_not_declare_one_space(minilm_path: Path, adapted: Path) -> None:
    with pytest.raises(ValueError, match=REFUSED + r".*Depths that share the full-depth space here: 6\. .*`mm2d adapt`"):
        Matryoshka2DEncoder(minilm_path, query_num_layers=2)  # a plain model
    with pytest.raises(ValueError, match=r"query_num_layers=3 with num_layers=4.*space here: 1, 2, 4\."):
        Matryoshka2DEncoder(adapted, query_num_layers=3)  # no head at 3 layers
    with pytest.raises(ValueError, match=r"query_num_layers=2 with num_layers=3.*space here: 1, 2, 4\."):
        Matryoshka2DEncoder(adapted, num_layers=3, query_num_layers=2)
    with pytest.raises(ValueError, match=r"query_num_layers must be an int in \[1, 4\], got 5"):
        Matryoshka2DEncoder(adapted, num_layers=2, query_num_layers=5)
    assert Matryoshka2DEncoder(minilm_path, num_layers=2, query_num_layers=2).query_num_layers == 2  # the same depth is no change


def test_depths_measured_for_a_known_model_are_allowed(minilm_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SHARED_SPACE_DEPTHS, str(minilm_path), frozenset({2}))
    assert Matryoshka2DEncoder(minilm_path, query_num_layers=2).shared_space_depths == {2, 6}


def test_both_adapters_embed_queries_at_the_query_depth(adapted: Path, minilm_path: Path) -> None:
    from mm2d_integrations.langchain import Matryoshka2DEmbeddings
    from mm2d_integrations.llama_index import Matryoshka2DEmbedding

    documents = Matryoshka2DEncoder(adapted).encode_documents(SENTENCES[:3])
    query = Matryoshka2DEncoder(adapted, num_layers=2).encode_queries(["a question"])[0]
    langchain = Matryoshka2DEmbeddings(model=adapted, query_num_layers=2)
    llama = Matryoshka2DEmbedding(model_name=adapted, query_num_layers=2)
    assert langchain.query_num_layers == llama.query_num_layers == 2
    np.testing.assert_allclose(langchain.embed_documents(SENTENCES[:3]), documents, atol=1e-6)
    np.testing.assert_allclose(langchain.embed_query("a question"), query, atol=1e-6)
    np.testing.assert_allclose(llama.get_text_embedding_batch(SENTENCES[:3]), documents, atol=1e-6)
    np.testing.assert_allclose(llama.get_query_embedding("a question"), query, atol=1e-6)
    assert Matryoshka2DEmbeddings.from_encoder(langchain.encoder).query_num_layers == 2
    assert Matryoshka2DEmbedding.from_dict(llama.to_dict()).encoder.query_num_layers == 2
    for build in (lambda: Matryoshka2DEmbeddings(model=minilm_path, query_num_layers=2), lambda: Matryoshka2DEmbedding(model_name=minilm_path, query_num_layers=2)):
        with pytest.raises(ValueError, match=REFUSED):
            build()


def test_chroma_serves_shallow_queries_on_a_full_depth_collection(adapted: Path, tmp_path: Path) -> None:
    from mm2d_integrations.langchain import Matryoshka2DEmbeddings
    from mm2d_integrations.langchain import chroma_vector_store as langchain_store
    from mm2d_integrations.llama_index import Matryoshka2DEmbedding
    from mm2d_integrations.llama_index import chroma_vector_store as llama_store

    client = chroma_client(tmp_path)
    collection = open_collection(Matryoshka2DEncoder(adapted), "docs", client=client)
    collection.add(ids=list(DOCUMENTS), documents=list(DOCUMENTS.values()))
    stored = collection.metadata[FINGERPRINT_KEY]
    function = Matryoshka2DEmbeddingFunction(adapted, query_num_layers=2)
    shallow = open_collection(function, "docs", client=client)  # no mismatch: the documents' space is the same
    questions = list(QUESTIONS)
    found = shallow.query(query_texts=questions, n_results=len(DOCUMENTS), include=["distances"])
    queries = Matryoshka2DEncoder(adapted, num_layers=2).encode_queries(questions)
    documents = Matryoshka2DEncoder(adapted).encode_documents(list(DOCUMENTS.values()))
    for row, (ids, distances) in enumerate(zip(found["ids"], found["distances"])):
        cosines = documents @ queries[row]
        assert ids == [list(DOCUMENTS)[index] for index in np.argsort(-cosines)]
        np.testing.assert_allclose(distances, 1 - np.sort(cosines)[::-1], atol=1e-4)
    assert langchain_store(Matryoshka2DEmbeddings(model=adapted, query_num_layers=2), "docs", client=client).similarity_search(questions[0], k=1)[0].id == found["ids"][0][0]
    llama_store(Matryoshka2DEmbedding(model_name=adapted, query_num_layers=2), "docs", client=client)
    assert client.get_collection("docs").metadata[FINGERPRINT_KEY] == stored
    with pytest.raises(EmbeddingSpaceMismatch, match="differs in num_layers"):  # documents at 2 layers are another collection
        open_collection(Matryoshka2DEncoder(adapted, num_layers=2), "docs", client=client)


def test_chroma_config_round_trips_the_query_depth_and_may_change_it(adapted: Path) -> None:
    function = Matryoshka2DEmbeddingFunction(adapted, query_num_layers=2)
    config = json.loads(json.dumps(function.get_config()))
    assert config["query_num_layers"] == 2 and config["num_layers"] == 4
    assert EncoderOptions.from_config(config).query_num_layers == 2
    rebuilt = Matryoshka2DEmbeddingFunction.build_from_config(config)
    np.testing.assert_array_equal(rebuilt.embed_query(["x"])[0], function.embed_query(["x"])[0])
    assert rebuilt.encoder.query_num_layers == 2
    function.validate_config_update(config, {**config, "query_num_layers": 1})  # not a change of the stored space
    function.validate_config_update(config, {**config, "query_num_layers": None})
    with pytest.raises(EmbeddingSpaceMismatch, match="cannot change num_layers"):
        function.validate_config_update(config, {**config, "num_layers": 2})


def test_embed_command_compares_a_shallow_query_with_a_full_depth_document(
    adapted: Path, minilm_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["embed", "a question", "a document", "--model", str(adapted), "--query-layers", "2"]) == 0
    printed = capsys.readouterr().out
    query = Matryoshka2DEncoder(adapted, num_layers=2).encode_queries(["a question"])[0]
    document = Matryoshka2DEncoder(adapted).encode_documents(["a document"])[0]
    assert f"cosine similarity (query A at 2 layers, document B at 4): {float(query @ document):.4f}" in printed
    assert main(["embed", "a", "b", "--model", str(minilm_path), "--query-num-layers", "2"]) == 2
    assert re.search("mm2d: error: " + REFUSED, capsys.readouterr().err)


class _Sources:
    """A generator that answers with the retrieved sources and notes the query depth it was given."""

    def __init__(self, encoder: Matryoshka2DEncoder, depths: list[int]) -> None:
        self.query_num_layers, self.depths = encoder.query_num_layers, depths

    def answer(self, question: str, passages: list) -> Answer:
        self.depths.append(self.query_num_layers)
        return Answer("retrieved", unique_sources(passages))


def test_ask_with_shallow_queries_on_a_full_depth_index(
    adapted_minilm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for key, text in DOCUMENTS.items():
        (folder / f"{key}.md").write_text(text)
    where = ["--persist-dir", str(tmp_path / "chroma")]
    assert main(["index", str(folder), "--model", str(adapted_minilm), *where]) == 0
    depths: list[int] = []
    monkeypatch.setattr("mm2d_integrations.rag.pipeline.make_generator", lambda name, encoder, framework: _Sources(encoder, depths))
    for framework in ("langchain", "llamaindex"):
        for question, expected in QUESTIONS.items():
            # Without --model or --layers, the collection's stored configuration, with the query depth given.
            assert main(["ask", question, "--query-layers", "2", "--framework", framework, "-k", "1", *where]) == 0
            assert capsys.readouterr().out.endswith(f"sources:\n  {expected}.md\n")
    assert depths == [2] * 2 * len(QUESTIONS)
    assert main(["ask", "What caused the outage in February?", "--query-layers", "3", *where]) == 2
    assert re.search(r"mm2d: error: query_num_layers=3 with num_layers=6.*space here: 2, 6\.", capsys.readouterr().err)


def _corpus_set(folder: Path) -> Path:
    """The test corpus as a BEIR folder: each question asks for its document."""
    from tests.test_evaluation_datasets import write_beir

    questions = [{"_id": f"q{index}", "text": question} for index, question in enumerate(QUESTIONS)]
    qrels = "".join(f"q{index}\t{key}\t1\n" for index, key in enumerate(QUESTIONS.values()))
    return write_beir(folder, [{"_id": key, "text": text} for key, text in DOCUMENTS.items()], questions, "query-id\tcorpus-id\tscore\n" + qrels)


def test_eval_retrieval_cross_depth_rows_beside_the_grid(adapted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mm2d_integrations.evaluation.datasets import read_beir
    from mm2d_integrations.evaluation.ranking import retrieval_scores

    folder = _corpus_set(tmp_path / "beir")
    arguments = ["eval", "retrieval", str(folder), "--model", str(adapted), "--layers", "4", "2", "1", "--dims", "32", "16"]
    assert main([*arguments, "--cross-depth", "--json", str(tmp_path / "grid.json")]) == 0
    printed = capsys.readouterr().out
    assert "cross-depth retrieval nDCG@10 x100: documents at 4 layers, queries at the layers of each row" in printed
    assert re.search(r"\nqueries +32 +16\n +2 +\d+\.\d\d \([+-]\d+\.\d%\) .*\n +1 ", printed)
    written = json.loads((tmp_path / "grid.json").read_text())
    assert list(written) == ["model", "task", "metric", "results", "seconds"]
    same = [row for row in written["results"] if "query_layers" not in row]
    crossed = [row for row in written["results"] if "query_layers" in row]
    assert {(row["layers"], row["dimensions"]) for row in same} == {(depth, width) for depth in (4, 2, 1) for width in (32, 16)}
    assert all(list(row) == ["layers", "dimensions", "score"] for row in same)
    assert all(list(row) == ["layers", "query_layers", "dimensions", "score"] for row in crossed)
    assert {(row["layers"], row["query_layers"], row["dimensions"]) for row in crossed} == {(4, d, w) for d in (2, 1) for w in (32, 16)}
    dataset = read_beir(folder)
    queries = Matryoshka2DEncoder(adapted, query_num_layers=2, dimensions=16).encode_queries(dataset.queries)
    documents = Matryoshka2DEncoder(adapted, dimensions=16).encode_documents(dataset.documents)
    expected = retrieval_scores(queries, documents, dataset, np.full(len(queries), -1))["nDCG@10"]
    assert next(row["score"] for row in crossed if (row["query_layers"], row["dimensions"]) == (2, 16)) == pytest.approx(expected, abs=1e-6)
    assert next(row["score"] for row in same if (row["layers"], row["dimensions"]) == (2, 16)) != pytest.approx(expected, abs=1e-6)
    assert main([*arguments[:-5], "--layers", "4", "--cross-depth"]) == 2
    assert "--cross-depth needs a --layers depth below the deepest one" in capsys.readouterr().err
