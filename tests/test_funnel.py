"""Funnel retrieval over Chroma: the two collections, their sync by the indexer, the retrievers, the CLI."""

from __future__ import annotations

import asyncio
import copy
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
from mm2d_integrations.core.encoder import truncate_dimensions
from mm2d_integrations.rag.indexer import index_folder, stored_ids
from mm2d_integrations.rag.pipeline import Store, ask
from mm2d_integrations.retrieval.documents import load_folder, split_documents
from mm2d_integrations.retrieval.funnel import Funnel
from mm2d_integrations.retrieval.vector_rows import VectorRows
from mm2d_integrations.samples import SAMPLE_DOCS
from tests.test_chroma import ChromaServer, chroma_server  # noqa: F401 (a fixture)
from tests.test_langchain import MINILM, TICK, with_ticker
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


def _support_index(tmp_path: Path, encoder: Matryoshka2DEncoder) -> tuple[Path, FunnelIndex]:
    """A copy of the sample's support folder, and an empty funnel index in a folder store."""
    folder = tmp_path / "docs"
    shutil.copytree(SAMPLE_DOCS / "support", folder)
    return folder, FunnelIndex(encoder, "docs", shortlist_dims=SHORT, client=chroma_client(tmp_path / "chroma"))


def test_reindexing_completes_a_run_killed_between_the_two_collections(
    tmp_path: Path, encoder: Matryoshka2DEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, index = _support_index(tmp_path, encoder)
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
    assert embedded == []  # their prefixes come from the full collection's vectors: nothing is embedded again
    assert stored_ids(index.full) == stored_ids(index.short) == set(chunks)
    assert (report.added, report.removed, report.unchanged) == (0, 2, len(chunks))
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
    for framework, model, funnel in (("langchain", RecordingChatModel(prompts=[]), Funnel(64, 10)), ("llamaindex", RecordingLLM(prompts=[]), "64x10")):
        answer = ask(question["question"], Store(persist_dir=persist), framework=framework, generator=model, funnel=funnel)
        assert answer.text == "recorded answer" and question["source"] in answer.sources
        assert question["question"] in model.prompts[-1] and "Use only the context below" in model.prompts[-1]
    with pytest.raises(ValueError, match="a funnel is SHORTLIST_DIMSxFACTOR"):
        ask("q", Store(persist_dir=persist), funnel="64")


# ---- the full vectors as memory-mapped rows -------------------------------------------------------


def _reading_from_chroma(index: FunnelIndex) -> FunnelIndex:
    """The same index re-ranking from vectors read back from the full collection, as with a Chroma server."""
    reading = copy.copy(index)
    reading.rows = None
    return reading


def test_the_rows_rerank_as_the_vectors_read_from_chroma(sample_index: FunnelIndex) -> None:
    assert sample_index.rows is not None and sample_index.rows.ids() == stored_ids(sample_index.full)
    ids = sorted(stored_ids(sample_index.full))
    found, rows = sample_index.rows.get(ids)
    assert found == ids
    np.testing.assert_allclose(rows, _vectors(sample_index.full, ids), atol=1e-3)  # float16
    reading = _reading_from_chroma(sample_index)
    for question in QUESTIONS:
        from_rows = sample_index.search(question["question"], k=5, shortlist_factor=10)
        from_chroma = reading.search(question["question"], k=5, shortlist_factor=10)
        assert [hit.id for hit in from_rows] == [hit.id for hit in from_chroma]
        np.testing.assert_allclose([hit.score for hit in from_rows], [hit.score for hit in from_chroma], atol=2e-3)
        assert [(hit.document, hit.metadata) for hit in from_rows] == [(hit.document, hit.metadata) for hit in from_chroma]


def test_without_a_folder_the_funnel_reads_the_full_vectors_from_chroma(sample_index: FunnelIndex, encoder: Matryoshka2DEncoder) -> None:
    import chromadb

    index = FunnelIndex(encoder, "docs", shortlist_dims=SHORT, client=chromadb.EphemeralClient())
    assert index.rows is None
    index.upsert(["a", "b"], ["Heat pumps move heat.", "Batteries store energy."], [{"source": "a.md"}, {"source": "b.md"}])
    assert [hit.id for hit in index.search("What stores energy?", k=2, shortlist_factor=1)] == ["b", "a"]
    assert index.held_ids() == [{"a", "b"}, {"a", "b"}]


def test_with_a_chroma_server_the_funnel_reads_the_full_vectors_from_it(
    chroma_server: ChromaServer, sample_index: FunnelIndex, encoder: Matryoshka2DEncoder  # noqa: F811 (the fixture imported above)
) -> None:
    import chromadb

    index = FunnelIndex(encoder, "docs", shortlist_dims=SHORT, client=chromadb.HttpClient(host="127.0.0.1", port=chroma_server.port))
    assert index.rows is None
    records = sample_index.full.get(include=["embeddings", "documents", "metadatas"])
    index.upsert(records["ids"], records["documents"], records["metadatas"], np.asarray(records["embeddings"], np.float32))
    for question in QUESTIONS[:10]:
        served = index.search(question["question"], k=4, where={"source": question["source"]})
        local = sample_index.search(question["question"], k=4, where={"source": question["source"]})
        assert [hit.id for hit in served] == [hit.id for hit in local] and all(hit.metadata["source"] == question["source"] for hit in served)


def test_a_run_killed_between_the_rows_write_and_their_mapping_is_completed(
    tmp_path: Path, encoder: Matryoshka2DEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, index = _support_index(tmp_path, encoder)
    write = VectorRows._write

    def killed(self: VectorRows, *args: Any) -> None:
        write(self, *args)  # the bytes are on disk, the ids not yet mapped to them
        raise KeyboardInterrupt

    monkeypatch.setattr(VectorRows, "_write", killed)
    with pytest.raises(KeyboardInterrupt):
        index_folder(folder, index)
    monkeypatch.undo()
    first = stored_ids(index.full)
    assert index.rows is not None and not index.rows.ids() and first  # the full collection got the first batch
    report = index_folder(folder, index)
    ids = stored_ids(index.full)
    # the first batch is restored from the full collection's vectors, not embedded again
    assert (report.added, report.unchanged) == (report.chunks - len(first), len(first)) and index.rows.ids() == ids == stored_ids(index.short)
    ordered = sorted(ids)
    np.testing.assert_allclose(index.rows.get(ordered)[1], _vectors(index.full, ordered), atol=1e-3)
    # a new process (a new VectorRows on the folder) finds the same rows
    again = FunnelIndex(encoder, "docs", shortlist_dims=SHORT, client=chroma_client(tmp_path / "chroma"))
    assert again.rows is not None and again.rows.get(ordered)[0] == ordered
    assert [hit.id for hit in again.search("warranty claim", k=3)] == [hit.id for hit in _reading_from_chroma(again).search("warranty claim", k=3)]


def test_rows_missing_for_some_ids_are_read_from_chroma_and_the_next_run_restores_them_unembedded(
    tmp_path: Path, encoder: Matryoshka2DEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, index = _support_index(tmp_path, encoder)
    index_folder(folder, index)
    assert index.rows is not None
    index.rows.delete(sorted(index.rows.ids()))  # as an index made before the rows were kept
    hits = index.search("How long is the warranty?", k=3)
    assert [hit.id for hit in hits] == [hit.id for hit in _reading_from_chroma(index).search("How long is the warranty?", k=3)]

    def no_embedding(texts: Any) -> None:
        raise AssertionError("a chunk the full collection holds was embedded again")

    monkeypatch.setattr(index.encoder, "encode_documents", no_embedding)
    report = index_folder(folder, index)
    ids = sorted(stored_ids(index.full))
    assert (report.added, report.unchanged) == (0, report.chunks) and index.rows.ids() == set(ids)
    np.testing.assert_allclose(index.rows.get(ids)[1], _vectors(index.full, ids), atol=1e-3)


def test_deleted_chunks_leave_the_rows_and_a_collection_made_again_starts_them_afresh(tmp_path: Path, encoder: Matryoshka2DEncoder) -> None:
    folder = tmp_path / "docs"
    shutil.copytree(SAMPLE_DOCS / "support", folder)
    client = chroma_client(tmp_path / "chroma")
    index = FunnelIndex(encoder, "docs", shortlist_dims=SHORT, client=client)
    index_folder(folder, index)
    removed = sorted(key for key in stored_ids(index.full) if key.startswith("customer_faq.html"))
    (folder / "customer_faq.html").unlink()
    report = index_folder(folder, index)
    assert report.removed == len(removed) > 0 and index.rows is not None
    assert index.rows.get(removed)[0] == []
    assert index.rows.ids() == stored_ids(index.full) == stored_ids(index.short)
    assert not {hit.id for hit in index.search("frequently asked questions", k=5)} & set(removed)
    client.delete_collection("docs")  # by plain chromadb: the rows belong to the collection that is gone
    fresh = FunnelIndex(encoder, "docs", shortlist_dims=SHORT, client=client)
    assert fresh.rows is not None and not fresh.rows.ids()


def test_rows_compact_when_dead_rows_outnumber_live_ones_and_an_open_reader_follows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    ids = [f"id{row}" for row in range(3000)]
    writer, reader = VectorRows(tmp_path, 16, owner="c"), None
    for start in range(0, 3000, 1000):
        writer.put(ids[start : start + 1000], vectors[start : start + 1000])
    writer.put(ids[:10], vectors[:10] * 2)  # a held id's row is rewritten in place
    reader = VectorRows(tmp_path, 16, owner="c")
    assert reader.get(ids[:2])[0] == ids[:2]  # maps generation 1
    writer.delete(ids[1000:2500])
    assert [path.name for path in tmp_path.glob("vectors-*.f16")] == ["vectors-1.f16"]  # 1500 dead < 1500 live: kept
    writer.delete(ids[2500:2900])
    assert [path.name for path in tmp_path.glob("vectors-*.f16")] == ["vectors-2.f16"]
    assert (tmp_path / "vectors-2.f16").stat().st_size == 1100 * 16 * 2
    kept = ids[:1000] + ids[2900:]
    expected = np.concatenate([vectors[:10] * 2, vectors[10:1000], vectors[2900:]])
    for store in (writer, reader):
        found, read = store.get(["gone", *ids[1000:1010], *kept])
        assert found == kept
        np.testing.assert_allclose(read, expected, atol=1e-2, rtol=1e-3)
    assert len(reader) == 1100 and reader.ids() == set(kept)
    writer.put([], np.zeros((0, 16)))  # nothing to write: nothing changes
    assert len(writer) == 1100
    with pytest.raises(ValueError, match=r"vectors must have shape \(1, 16\), got \(1, 8\)"):
        writer.put(["x"], np.zeros((1, 8)))


# ---- filters and async paths -------------------------------------------------------------------------


def test_langchain_funnel_filters_like_the_chroma_store_retriever(sample_index: FunnelIndex, client: Any) -> None:
    from langchain_chroma import Chroma

    from mm2d_integrations.langchain import FunnelRetriever, Matryoshka2DEmbeddings

    store = Chroma(client=client, collection_name="docs", embedding_function=Matryoshka2DEmbeddings.from_encoder(sample_index.encoder))
    question = "How many days do I have to return a product?"
    for search_kwargs in (
        {"k": 4, "filter": {"source": "policies/expense_policy.md"}},
        {"k": 3, "filter": {"source": {"$in": ["hr/onboarding_guide.md", "products/pulse_tp3_spec.md"]}}},
    ):
        theirs = store.as_retriever(search_kwargs=search_kwargs).invoke(question)
        ours = FunnelRetriever(index=sample_index, search_kwargs=search_kwargs, shortlist_factor=50).invoke(question)
        wanted = search_kwargs["filter"]["source"]
        allowed = set(wanted["$in"]) if isinstance(wanted, dict) else {wanted}
        assert len(ours) == search_kwargs["k"] and {doc.metadata["source"] for doc in ours} <= allowed
        assert [doc.id for doc in ours] == [doc.id for doc in theirs]  # few enough to be shortlisted whole: exact
    where = FunnelRetriever(index=sample_index, k=2, search_kwargs={"where": {"source": "support/customer_faq.html"}}).invoke(question)
    assert {doc.metadata["source"] for doc in where} == {"support/customer_faq.html"}
    with pytest.raises(ValueError, match="search_kwargs may hold k and filter \\(or where\\), got 'where_document'"):
        FunnelRetriever(index=sample_index, search_kwargs={"where_document": {"$contains": "x"}})


def test_llama_index_funnel_takes_metadata_filters(sample_index: FunnelIndex) -> None:
    from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters

    from mm2d_integrations.llama_index import FunnelRetriever

    question = "How many days do I have to return a product?"
    one = MetadataFilters(filters=[MetadataFilter(key="source", value="support/warranty_and_returns.txt")])
    nodes = FunnelRetriever(sample_index, similarity_top_k=3, filters=one).retrieve(question)
    assert len(nodes) == 3 and {node.node.metadata["source"] for node in nodes} == {"support/warranty_and_returns.txt"}
    either = MetadataFilters(
        filters=[MetadataFilter(key="source", value=["hr/onboarding_guide.md", "policies/expense_policy.md"], operator=FilterOperator.IN)]
    )
    nodes = FunnelRetriever(sample_index, similarity_top_k=4, filters=either).retrieve(question)
    assert len(nodes) == 4 and {node.node.metadata["source"] for node in nodes} <= {"hr/onboarding_guide.md", "policies/expense_policy.md"}
    nothing = MetadataFilters(filters=[MetadataFilter(key="source", value="no/such/file.md")])
    assert FunnelRetriever(sample_index, filters=nothing).retrieve(question) == []


def test_a_filter_on_a_shortlist_collection_without_metadata_is_refused(tmp_path: Path, encoder: Matryoshka2DEncoder) -> None:
    index = FunnelIndex(encoder, "old", shortlist_dims=8, client=chroma_client(tmp_path))
    index.upsert(["a"], ["Heat pumps move heat."], [{"source": "a.md"}])
    vector = index.short.get(ids=["a"], include=["embeddings"])["embeddings"]
    index.short.delete(ids=["a"])
    index.short.add(ids=["a"], embeddings=vector)  # as an index made before the shortlist kept metadata
    assert index.search("heat", k=1)  # unfiltered: fine
    with pytest.raises(ValueError, match="collection 'old-short8' holds no metadata to filter by .*shortlist_dims=8"):
        index.search("heat", k=1, where={"source": "a.md"})


async def test_async_retrieval_matches_and_does_not_block_the_event_loop(sample_index: FunnelIndex) -> None:
    from llama_index.core.schema import QueryBundle

    from mm2d_integrations.langchain import FunnelRetriever as LangChainRetriever
    from mm2d_integrations.llama_index import FunnelRetriever as LlamaRetriever

    langchain = LangChainRetriever(index=sample_index, k=3, search_kwargs={"filter": {"source": "support/customer_faq.html"}})
    llama = LlamaRetriever(sample_index, similarity_top_k=3)
    questions = [question["question"] for question in QUESTIONS[:12]]
    found, ticks, elapsed = await with_ticker(asyncio.gather(*(langchain.ainvoke(question) for question in questions)))
    assert ticks >= elapsed / TICK / 4  # the loop kept turning while queries were encoded and searched
    nodes, ticks, elapsed = await with_ticker(asyncio.gather(*(llama.aretrieve(QueryBundle(question)) for question in questions)))
    assert ticks >= elapsed / TICK / 4
    assert [[doc.id for doc in docs] for docs in found] == [[doc.id for doc in langchain.invoke(question)] for question in questions]
    assert [[node.node.node_id for node in hits] for hits in nodes] == [[node.node.node_id for node in llama.retrieve(question)] for question in questions]
