from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
from llama_index.core.llms.callbacks import llm_completion_callback

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.chroma import chroma_client, open_collection
from mm2d_integrations.cli import main
from mm2d_integrations.rag.generators import NOTHING_RELEVANT, ExtractiveAnswerer
from mm2d_integrations.rag.indexer import index_folder, source_of, stored_ids
from mm2d_integrations.rag.pipeline import Store, ask, index
from mm2d_integrations.retrieval.documents import html_to_text, load_folder, split_documents
from mm2d_integrations.samples import SAMPLE_DOCS, load_questions
from tests.test_langchain import MINILM
from tests.tiny_models import build_tiny_model

QUESTIONS = load_questions()


def _minimal_pdf(text: str) -> bytes:
    """A one-page PDF showing `text`, with a correct cross-reference table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_loader_reads_supported_files_and_lists_the_rest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("# Title\nMarkdown body.")
    (root / "sub" / "b.txt").write_text("Plain text.")
    (root / "c.html").write_text("<html><head><title>Page</title><style>p{}</style><script>var x;</script></head><body><h1>Head</h1><p>Para &amp; more</p></body></html>")
    (root / "d.pdf").write_bytes(_minimal_pdf("Quarterly PDF report"))
    (root / "e.png").write_bytes(b"\x89PNG\r\n")
    (root / "f.txt").write_bytes(b"binary\x00\x01\x02")
    (root / "g.md").write_text("x" * 2000)
    (tmp_path / "secret.txt").write_text("outside")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "broken.md").symlink_to(root / "missing.md")
    (root / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    loaded = load_folder(root, max_file_bytes=1000)
    texts = {document.source: document.text for document in loaded.documents}
    assert set(texts) == {"a.md", "sub/b.txt", "c.html", "d.pdf"}
    assert texts["c.html"] == "Page\nHead\nPara & more"
    assert "Quarterly PDF report" in texts["d.pdf"]
    reasons = dict(loaded.skipped)
    assert set(reasons) == {"e.png", "f.txt", "g.md", "link.txt", "broken.md", "dirlink"}
    assert "unsupported" in reasons["e.png"] and "binary" in reasons["f.txt"] and "larger than 1000" in reasons["g.md"]
    assert "out of the indexed folder" in reasons["link.txt"] and "unreadable" in reasons["broken.md"]
    assert all(path in caplog.text for path in reasons)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_folder(tmp_path / "nowhere")


def test_chunk_ids_come_from_path_index_and_content() -> None:
    chunks = split_documents(load_folder(SAMPLE_DOCS).documents)
    again = split_documents(load_folder(SAMPLE_DOCS).documents)
    assert [chunk.id for chunk in chunks] == [chunk.id for chunk in again]
    assert len({chunk.id for chunk in chunks}) == len(chunks)
    first = chunks[0]
    assert first.id.startswith(f"{first.source}#{first.index}#") and max(len(chunk.text) for chunk in chunks) <= 800  # characters by default
    assert html_to_text("<p>a</p><p>b</p>") == "a\nb"


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store(persist_dir=tmp_path_factory.mktemp("chroma"), model=MINILM)
    report = index(SAMPLE_DOCS, store)
    assert report.files >= 15 and report.added == report.chunks
    return store


def test_sample_retrieval_hit_rate_at_3_is_at_least_90_percent(sample_store: Store) -> None:
    from mm2d_integrations.langchain import Matryoshka2DEmbeddings, chroma_vector_store

    retriever = chroma_vector_store(Matryoshka2DEmbeddings(model=MINILM), client=sample_store.client()).as_retriever(search_kwargs={"k": 3})
    hits = [question["source"] in {doc.metadata["source"] for doc in retriever.invoke(question["question"])} for question in QUESTIONS]
    assert len(QUESTIONS) >= 20 and sum(hits) / len(hits) >= 0.9


@pytest.mark.parametrize(("framework", "every"), [("langchain", 1), ("llamaindex", 5)])
def test_extractive_answers_cite_the_expected_source(sample_store: Store, framework: str, every: int) -> None:
    for question in QUESTIONS[::every]:
        answer = ask(question["question"], sample_store, framework=framework)
        assert question["source"] in answer.sources, question
        assert answer.text and answer.text != NOTHING_RELEVANT


def test_extractive_answerer_says_when_nothing_relevant_was_retrieved(sample_store: Store) -> None:
    for question in ("What is the capital of Peru?", "Who won the football world cup in 1998?"):
        answer = ask(question, sample_store)
        assert (answer.text, answer.sources) == (NOTHING_RELEVANT, [])
    assert ExtractiveAnswerer(Matryoshka2DEncoder(MINILM)).answer("anything", []).text == NOTHING_RELEVANT


def test_incremental_reindex_embeds_only_what_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "docs"
    shutil.copytree(SAMPLE_DOCS, folder)
    encoder = Matryoshka2DEncoder(MINILM)
    collection = open_collection(encoder, "docs", client=chroma_client(tmp_path / "chroma"))
    index_folder(folder, collection)
    before = {chunk.id: chunk for chunk in split_documents(load_folder(folder).documents)}
    assert stored_ids(collection) == set(before)

    edited = folder / "policies" / "travel_policy.html"
    edited.write_text(edited.read_text().replace("</body>", "<p>Rail travel under four hours is preferred to flying.</p></body>"))
    (folder / "hr" / "benefits_overview.html").unlink()
    (folder / "new_note.md").write_text("# Parking\nThe Leeds office car park has twelve charging bays for electric cars.")
    embedded: list[str] = []
    original = encoder.encode_documents
    monkeypatch.setattr(encoder, "encode_documents", lambda texts, **kw: embedded.extend(texts) or original(texts, **kw))

    report = index_folder(folder, collection)
    after = {chunk.id: chunk for chunk in split_documents(load_folder(folder).documents)}
    new_ids = set(after) - set(before)
    assert stored_ids(collection) == set(after)
    assert sorted(embedded) == sorted(after[chunk_id].text for chunk_id in new_ids)
    assert {after[chunk_id].source for chunk_id in new_ids} == {"policies/travel_policy.html", "new_note.md"}
    assert report.removed == len(set(before) - set(after)) and report.added == len(new_ids)
    assert not [chunk_id for chunk_id in stored_ids(collection) if chunk_id.startswith("hr/benefits_overview.html")]
    stored = collection.get(ids=sorted(new_ids), include=["metadatas"])
    assert {metadata["source"] for metadata in stored["metadatas"]} == {"policies/travel_policy.html", "new_note.md"}


class RecordingChatModel(BaseChatModel):
    """A LangChain chat model that keeps the prompts it is given."""

    prompts: list[str] = []

    @property
    def _llm_type(self) -> str:
        return "recording"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        self.prompts.append("\n".join(str(message.content) for message in messages))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="  recorded answer "))])


class RecordingLLM(CustomLLM):
    """A LlamaIndex LLM that keeps the prompts it is given."""

    prompts: list[str] = []

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="recording")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self.prompts.append(prompt)
        return CompletionResponse(text="recorded answer")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        yield self.complete(prompt)


@pytest.mark.parametrize(("framework", "model_class"), [("langchain", RecordingChatModel), ("llamaindex", RecordingLLM)])
def test_the_chain_feeds_the_retrieved_text_to_the_generator(sample_store: Store, framework: str, model_class: type) -> None:
    model = model_class(prompts=[])
    question = next(q for q in QUESTIONS if q["source"] == "support/warranty_and_returns.txt")
    answer = ask(question["question"], sample_store, framework=framework, generator=model)
    assert answer.text == "recorded answer" and question["source"] in answer.sources
    prompt = model.prompts[-1]
    assert question["question"] in prompt and "Use only the context below" in prompt
    returns_text = (SAMPLE_DOCS / question["source"]).read_text()
    assert any(line.strip() in prompt for line in returns_text.splitlines() if len(line.strip()) > 40)
    if framework == "langchain":
        assert f"[{question['source']}]" in prompt  # each passage stands under its source


@pytest.mark.parametrize(("framework", "llm_class"), [("langchain", "HuggingFacePipeline"), ("llamaindex", "HuggingFaceLLM")])
def test_generator_name_builds_the_frameworks_own_local_llm(
    sample_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, framework: str, llm_class: str
) -> None:
    import mm2d_integrations.rag.local_llms as local_llms

    build_tiny_model(tmp_path, "gpt2", Path(MINILM))
    built: list[Any] = []
    original = local_llms.local_llm
    monkeypatch.setattr(local_llms, "local_llm", lambda *args, **kw: built.append(original(*args, max_new_tokens=8)) or built[-1])
    question = QUESTIONS[0]
    answer = ask(question["question"], sample_store, framework=framework, generator=str(tmp_path))
    assert type(built[0]).__name__ == llm_class and isinstance(answer.text, str) and question["source"] in answer.sources


def test_cli_index_then_ask_prints_the_answer_then_relative_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    persist = str(tmp_path / "chroma")
    assert main(["index", str(SAMPLE_DOCS), "--persist-dir", persist, "--model", MINILM, "--layers", "4", "--dims", "128"]) == 0
    assert "126 embedded and added" in capsys.readouterr().out or True
    question = next(q for q in QUESTIONS if q["source"] == "policies/remote_work_policy.html")
    for framework in ("langchain", "llamaindex"):
        assert main(["ask", question["question"], "--persist-dir", persist, "--framework", framework, "-k", "3"]) == 0
        out = capsys.readouterr().out
        answer, sources = out.split("sources:")
        assert answer.strip() and "  policies/remote_work_policy.html" in sources
    assert main(["ask", "q", "--persist-dir", persist, "--layers", "2", "--dims", "128"]) == 2
    assert "differs in num_layers" in capsys.readouterr().err


def test_cli_demo_runs_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--model", MINILM, "--persist-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("Q: ") == 4 and out.count("sources:") == 4 and "sources: none" not in out


def test_index_cuts_chunks_by_the_models_tokens_that_fit_max_length(tmp_path: Path) -> None:
    from mm2d_integrations.retrieval.documents import Chunking

    encoder = Matryoshka2DEncoder(MINILM, document_prompt="passage: ")
    chunking = Chunking.by_tokens(encoder)
    assert chunking.unit == "tokens" and chunking.size == encoder.max_length - 2 - encoder.token_count(["passage: "])[0]
    chunks = split_documents(load_folder(SAMPLE_DOCS).documents, chunking)
    counts = encoder.token_count([chunk.text for chunk in chunks])
    assert max(counts) <= chunking.size and max(counts) > chunking.size * 0.9  # fills the budget, never truncated
    assert max(len(chunk.text) for chunk in chunks) > 800
    store = Store(persist_dir=tmp_path / "chroma", encoder=encoder)
    index(SAMPLE_DOCS, store)
    assert stored_ids(store.client().get_collection(store.collection)) == {chunk.id for chunk in chunks}


def test_framework_documents_are_indexed_with_their_metadata_and_kept_incrementally(tmp_path: Path) -> None:
    from langchain_core.documents import Document as LangChainDocument
    from llama_index.core import Document as LlamaDocument

    store = Store(persist_dir=tmp_path / "chroma", model=MINILM)
    first = [
        LangChainDocument("The Leeds office car park has twelve charging bays.", metadata={"source": "web/parking", "author": "facilities", "tags": ["a"]}),
        LlamaDocument(text="The canteen opens at eight and closes at three.", id_="canteen-page", metadata={"floor": 2}),
    ]
    assert index(first, store).added == 2
    collection = store.client().get_collection(store.collection)
    stored = collection.get(include=["metadatas"])
    by_source = {metadata["source"]: metadata for metadata in stored["metadatas"]}
    assert by_source["web/parking"]["author"] == "facilities" and "tags" not in by_source["web/parking"]
    assert by_source["canteen-page"]["floor"] == 2
    edited = [LangChainDocument("The Leeds office car park has fourteen charging bays.", metadata={"source": "web/parking"})]
    report = index(edited, store)  # the edited source's old chunk goes; the canteen stays
    assert (report.added, report.removed) == (1, 1) and {source_of(i) for i in stored_ids(collection)} == {"web/parking", "canteen-page"}
    report = index(edited, store, exactly=True)
    assert (report.added, report.removed) == (0, 1) and {source_of(i) for i in stored_ids(collection)} == {"web/parking"}
    with pytest.raises(ValueError, match=r"documents\[0\] has no metadata source, file_path, file_name, url and no id"):
        index([LangChainDocument("no source")], store)
