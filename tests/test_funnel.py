"""Funnel retrieval over Chroma: the two collections, their sync by the indexer, the retrievers, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.chroma import (
    FINGERPRINT_KEY,
    EmbeddingSpaceMismatch,
    FunnelIndex,
    chroma_client,
    encoder_config,
    stored_embedding_function,
)
from mm2d_integrations.cli import main
from mm2d_integrations.documents import load_folder, split_documents
from mm2d_integrations.encoder import truncate_dimensions
from mm2d_integrations.funnel import Funnel
from mm2d_integrations.rag.indexer import index_folder, stored_ids
from mm2d_integrations.rag.pipeline import Store, ask
from mm2d_integrations.samples import SAMPLE_DOCS
from tests.test_langchain import MINILM
from tests.test_rag import QUESTIONS, RecordingChatModel, RecordingLLM

SHORT = 64


@pytest.fixture(scope="module")
def encoder() -> Matryoshka2DEncoder:
    return Matryoshka2DEncoder(MINILM)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return chroma_client(tmp_path_factory.mktemp("chroma"))


@pytest.fixture(scope="module")
def sample_index(client: Any, encoder: Matryoshka2DEncoder) -> FunnelIndex:
    index = FunnelIndex(encoder, "docs", shortlist_dims=SHORT, client=client)
    report = index_folder(SAMPLE_DOCS, index)
    assert report.added == report.chunks == len(stored_ids(index.full)) == len(stored_ids(index.short))
    return index


def _vectors(collection, ids: list[str]) -> np.ndarray:
    records = collection.get(ids=ids, include=["embeddings"])
    position = {key: row for row, key in enumerate(records["ids"])}
    return np.asarray(records["embeddings"], np.float32)[[position[key] for key in ids]]


def test_the_short_collection_holds_the_prefixes_of_the_same_vectors(
    sample_index: FunnelIndex, client: Any, encoder: Matryoshka2DEncoder
) -> None:
    ids = sorted(stored_ids(sample_index.full))
    assert sorted(stored_ids(sample_index.short)) == ids and sample_index.short.name == "docs-short64"
    full, short = _vectors(sample_index.full, ids), _vectors(sample_index.short, ids)
    assert full.shape == (len(ids), 384) and short.shape == (len(ids), SHORT)
    np.testing.assert_allclose(short, truncate_dimensions(full, SHORT), atol=1e-6)
    fingerprints = [json.loads(collection.metadata[FINGERPRINT_KEY]) for collection in (sample_index.full, sample_index.short)]
    assert fingerprints[0] == encoder_config(encoder) and fingerprints[1] == encoder_config(encoder.with_dimensions(SHORT))
    assert fingerprints[1] == {**fingerprints[0], "dimensions": SHORT}
    rebuilt = stored_embedding_function(sample_index.short.name, client=client)  # what plain chromadb rebuilds
    np.testing.assert_allclose(rebuilt(["a heat pump"])[0], truncate_dimensions(encoder.encode_documents(["a heat pump"]), SHORT)[0], atol=1e-6)


def test_both_collections_refuse_another_embedding_space(tmp_path: Path, encoder: Matryoshka2DEncoder) -> None:
    client = chroma_client(tmp_path)
    FunnelIndex(encoder, "docs", shortlist_dims=SHORT, client=client).upsert(["a"], ["a battery"])
    with pytest.raises(EmbeddingSpaceMismatch, match="collection 'docs' .*differs in num_layers"):
        FunnelIndex(Matryoshka2DEncoder(MINILM, num_layers=3), "docs", shortlist_dims=SHORT, client=client)
    # the short collection is guarded on its own: here it was filled by 3 layers, the full one is new
    FunnelIndex(Matryoshka2DEncoder(MINILM, num_layers=3), "other", shortlist_dims=SHORT, client=client).upsert(["a"], ["a battery"])
    client.delete_collection("other")
    with pytest.raises(EmbeddingSpaceMismatch, match="collection 'other-short64' .*differs in num_layers"):
        FunnelIndex(encoder, "other", shortlist_dims=SHORT, client=client)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda index: FunnelIndex(index.encoder, "bad", shortlist_dims=384), r"shortlist_dims must be an int in \[1, 383\], got 384"),
        (lambda index: FunnelIndex(index.encoder, "bad", shortlist_dims=0), r"shortlist_dims must be an int in \[1, 383\], got 0"),
        (lambda index: index.search("q", k=3, shortlist_factor=0), r"shortlist_factor must be an int in \[1, 1048576\], got 0"),
        (lambda index: index.search("q", k=0), r"k must be an int in \[1, 1048576\], got 0"),
        (lambda index: index.upsert(["a"], ["a"], vectors=np.zeros((1, SHORT))), r"vectors must have shape \(1, 384\), got \(1, 64\)"),
        (lambda index: Funnel.parse("64"), "a funnel is SHORTLIST_DIMSxFACTOR, for example 64x10, got '64'"),
        (lambda index: Funnel.parse("64x0"), r"shortlist_factor must be an int in \[1, 1048576\], got 0"),
        (lambda index: Funnel.parse("0x10").check(384), r"shortlist_dims must be an int in \[1, 383\], got 0"),
    ],
)
def test_bad_arguments_name_the_valid_range(sample_index: FunnelIndex, make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(sample_index)


def test_funnel_parse_round_trips() -> None:
    assert Funnel.parse(" 64x10 ") == Funnel(64, 10) and str(Funnel(64, 10)) == "64x10"
    assert Funnel.parse("32x1").check(33) == Funnel(32, 1)


def _exact_top(index: FunnelIndex, question: str, k: int) -> list[str]:
    records = index.full.get(include=["embeddings"])
    scores = np.asarray(records["embeddings"], np.float32) @ index.encoder.encode_queries([question])[0]
    return [records["ids"][row] for row in np.argsort(-scores, kind="stable")[:k]]


@pytest.mark.parametrize("framework", ["langchain", "llamaindex"])
def test_retrievers_find_the_source_and_match_exact_full_search(sample_index: FunnelIndex, framework: str) -> None:
    if framework == "langchain":
        from mm2d_integrations.langchain import FunnelRetriever

        retriever = FunnelRetriever(index=sample_index, k=3, shortlist_factor=10)
        results = [[(doc.id, doc.metadata["source"], doc.metadata["score"]) for doc in retriever.invoke(q["question"])] for q in QUESTIONS]
    else:
        from mm2d_integrations.llama_index import FunnelRetriever

        retriever = FunnelRetriever(sample_index, similarity_top_k=3, shortlist_factor=10)
        results = [[(node.node.node_id, node.node.metadata["source"], node.score) for node in retriever.retrieve(q["question"])] for q in QUESTIONS]
    hits = [question["source"] in {source for _, source, _ in found} for question, found in zip(QUESTIONS, results)]
    assert sum(hits) / len(hits) >= 0.9
    same = [[key for key, _, _ in found] == _exact_top(sample_index, question["question"], 3) for question, found in zip(QUESTIONS, results)]
    assert sum(same) / len(same) >= 0.8  # 42 of 49: MiniLM was not trained for its 64-dimension prefix to rank
    scores = [[score for *_, score in found] for found in results]
    assert all(len(found) == 3 and found == sorted(found, reverse=True) for found in scores)


def test_retrievers_check_their_arguments(sample_index: FunnelIndex) -> None:
    from mm2d_integrations.langchain import FunnelRetriever as LangChainRetriever
    from mm2d_integrations.llama_index import FunnelRetriever as LlamaRetriever

    with pytest.raises(ValueError, match=r"k must be an int in \[1, 1048576\], got 0"):
        LangChainRetriever(index=sample_index, k=0)
    with pytest.raises(ValueError, match=r"similarity_top_k must be an int in \[1, 1048576\], got 0"):
        LlamaRetriever(sample_index, similarity_top_k=0)
    with pytest.raises(ValueError, match=r"shortlist_factor must be an int in \[1, 1048576\], got 0"):
        LlamaRetriever(sample_index, shortlist_factor=0)


def test_a_funnel_search_returns_what_there_is(tmp_path: Path, encoder: Matryoshka2DEncoder) -> None:
    index = FunnelIndex(encoder, "small", shortlist_dims=8, client=chroma_client(tmp_path))
    assert index.search("anything") == []
    index.upsert(["a", "b"], ["Heat pumps move heat.", "Batteries store energy."], [{"source": "a.md"}, {"source": "b.md"}])
    hits = index.search("What stores energy?", k=5, shortlist_factor=1)
    assert [hit.id for hit in hits] == ["b", "a"] and hits[0].document == "Batteries store energy." and hits[0].metadata == {"source": "b.md"}


def test_reindexing_completes_a_run_killed_between_the_two_collections(
    tmp_path: Path, encoder: Matryoshka2DEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "docs"
    shutil.copytree(SAMPLE_DOCS / "support", folder)
    index = FunnelIndex(encoder, "docs", shortlist_dims=SHORT, client=chroma_client(tmp_path / "chroma"))
    index_folder(folder, index)
    chunks = {chunk.id: chunk for chunk in split_documents(load_folder(folder).documents)}
    # killed after writing full vectors, before their prefixes; and in the middle of deleting stale chunks
    unwritten = sorted(chunks)[:3]
    index.short.delete(ids=unwritten)
    index.full.upsert(ids=["gone.md#0#0"], embeddings=encoder.encode_documents(["stale"]), documents=["stale"])
    index.short.upsert(ids=["gone.md#1#0"], embeddings=np.ones((1, SHORT), np.float32))
    embedded: list[str] = []
    original = encoder.encode_documents
    monkeypatch.setattr(encoder, "encode_documents", lambda texts, **kw: embedded.extend(texts) or original(texts, **kw))

    report = index_folder(folder, index)
    assert sorted(embedded) == sorted(chunks[key].text for key in unwritten)  # once each, for both collections
    assert stored_ids(index.full) == stored_ids(index.short) == set(chunks)
    assert (report.added, report.removed, report.unchanged) == (3, 2, len(chunks) - 3)
    ids = sorted(chunks)
    np.testing.assert_allclose(_vectors(index.short, ids), truncate_dimensions(_vectors(index.full, ids), SHORT), atol=1e-6)


def test_cli_index_with_a_shortlist_then_ask_through_the_funnel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Then `ask` through the funnel with any chat model / LLM too: the retrieved text reaches it."""
    folder = tmp_path / "docs"
    shutil.copytree(SAMPLE_DOCS / "policies", folder / "policies")
    persist = str(tmp_path / "chroma")
    assert main(["index", str(folder), "--persist-dir", persist, "--model", MINILM, "--shortlist-dims", "64"]) == 0
    assert "embedded and added" in capsys.readouterr().out
    question = next(q for q in QUESTIONS if q["source"] == "policies/remote_work_policy.html")
    for framework in ("langchain", "llamaindex"):
        assert main(["ask", question["question"], "--persist-dir", persist, "--framework", framework, "--funnel", "64x10"]) == 0
        answer, sources = capsys.readouterr().out.split("sources:")
        assert answer.strip() and "  policies/remote_work_policy.html" in sources
    for funnel, message in [
        ("32x10", "collection 'mm2d' has no shortlist collection 'mm2d-short32' (made by indexing with shortlist_dims=32): run mm2d index DIR --shortlist-dims 32 first\n"),
        ("64", "a funnel is SHORTLIST_DIMSxFACTOR, for example 64x10, got '64'"),
        ("384x10", r"shortlist_dims must be an int in [1, 383], got 384"),
    ]:
        assert main(["ask", "q", "--persist-dir", persist, "--funnel", funnel]) == 2
        assert message in capsys.readouterr().err
    for framework, model in (("langchain", RecordingChatModel(prompts=[])), ("llamaindex", RecordingLLM(prompts=[]))):
        answer = ask(question["question"], Store(persist_dir=persist), framework=framework, generator=model, funnel=Funnel(64, 10))
        assert answer.text == "recorded answer" and question["source"] in answer.sources
        assert question["question"] in model.prompts[-1] and "Use only the context below" in model.prompts[-1]
