"""Index a folder and ask questions of it, through LangChain or LlamaIndex: what `mm2d index` / `ask` run."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from mm2d_integrations.chroma import FunnelIndex, chroma_client, has_collection, open_collection, stored_encoder
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.core.encoder import Matryoshka2DEncoder
from mm2d_integrations.core.options import EncoderOptions
from mm2d_integrations.core.validation import check_choice
from mm2d_integrations.rag import FRAMEWORKS, Framework
from mm2d_integrations.rag.generators import EXTRACTIVE, Answer, ExtractiveAnswerer, Generator
from mm2d_integrations.rag.indexer import DocumentsInput, IndexReport, exactly_by_default, index_folder, read_input
from mm2d_integrations.retrieval.documents import Chunking
from mm2d_integrations.retrieval.funnel import Funnel
from mm2d_integrations.retrieval.store_rules import DEFAULT_COLLECTION, DEFAULT_PERSIST_DIR, IndexBusy, MissingIndex, check_collection_name
from mm2d_integrations.serving.remote import RemoteEncoder

__all__ = ["Store", "ask", "index", "make_generator", "writing"]


@dataclass
class Store:
    """Where the vectors live, and (optionally) the encoder to make them with."""

    collection: str = DEFAULT_COLLECTION
    persist_dir: str | Path | None = None
    host: str | None = None
    port: int | None = None
    model: str | None = None
    options: EncoderOptions = field(default_factory=EncoderOptions)
    """How the model is cut and run (num_layers, dimensions, batch_size, device ...)."""
    encoder: Matryoshka2DEncoder | None = None
    """An encoder to use as it is, instead of one built from `model` and `options`."""
    shortlist_dims: int | None = None
    """When set, `index` also keeps the vectors' first `shortlist_dims` components, for funnel retrieval."""
    adopt: bool = False
    """`index` may take over a collection built elsewhere, once a sample of it checks out (`chroma.open_collection`)."""

    def __post_init__(self) -> None:
        check_collection_name(self.collection)  # before any model loads

    @property
    def is_server(self) -> bool:
        return self.host is not None or self.port is not None

    @property
    def location(self) -> str:
        if self.is_server:
            return f"the Chroma server at {self.host or 'localhost'}:{self.port or 8000}"
        return str(Path(self.persist_dir or DEFAULT_PERSIST_DIR))

    def client(self) -> Any:
        return chroma_client(self.persist_dir, self.host, self.port)

    def existing_client(self) -> Any:
        """A client of a store that holds the collection; a `MissingIndex` (and nothing created) otherwise."""
        missing = MissingIndex(f"no index at {self.location} (collection {self.collection!r})")
        try:
            client = chroma_client(self.persist_dir, self.host, self.port, create=False)
        except MissingIndex:
            raise missing from None
        if not has_collection(client, self.collection):
            raise missing
        return client

    def writer_lock(self) -> FileLock:
        """Held while indexing, so that two runs never interleave their writes: a file in the Chroma
        folder, or for a server a file in this machine's temporary folder (it guards this machine's runs)."""
        if self.is_server:
            path = Path(tempfile.gettempdir()) / f"mm2d-index-{self.host or 'localhost'}-{self.port or 8000}.lock"
        else:
            path = Path(self.persist_dir or DEFAULT_PERSIST_DIR) / "mm2d-index.lock"
            path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(path, timeout=0)

    def resolved_encoder(self) -> Matryoshka2DEncoder:
        """The given encoder, else the one `model` and `options` describe."""
        return self.encoder or Matryoshka2DEncoder(self.model or default_model(), self.options)

    def open_for_queries(self, shortlist_dims: int | None = None) -> tuple[Any, Matryoshka2DEncoder | RemoteEncoder, Any]:
        """The client, the encoder to query with, and what to search, its space checked once: the given
        encoder (or the one `model` and `options` name) against the space the collection records, or, with
        none of model, num_layers or dimensions named, the encoder the collection records, rebuilt and
        checked to still give it (queries at `options.query_num_layers` when given). What is searched is
        the collection, or with `shortlist_dims` a complete `FunnelIndex` over it. Nothing is created: a
        missing store, collection or shortlist collection is a `MissingIndex`."""
        client = self.existing_client()
        named = self.encoder is not None or self.model is not None or self.options.num_layers is not None or self.options.dimensions is not None
        encoder: Matryoshka2DEncoder | RemoteEncoder
        if not named:
            encoder = stored_encoder(self.collection, client=client, query_num_layers=self.options.query_num_layers)
            collection = client.get_collection(self.collection)
        else:
            encoder = self.resolved_encoder()
            collection = open_collection(encoder, self.collection, client=client, create=False)
        if shortlist_dims is None:
            return client, encoder, collection
        return client, encoder, FunnelIndex(encoder, self.collection, shortlist_dims=shortlist_dims, client=client, create=False, full=collection)


def index(
    documents: DocumentsInput,
    store: Store,
    *,
    chunking: Chunking | None = None,
    exactly: bool | None = None,
    show_progress: bool = False,
) -> IndexReport:
    """Make the store's collection (and its shortlist collection) hold the chunks of `documents`: a
    folder, or LangChain / LlamaIndex / our documents (see `index_folder`, and its `exactly`).

    `chunking`: default, chunks the encoder embeds whole, measured with its own tokenizer
    (`Chunking.by_tokens`); `Chunking()` gives 800-character chunks. The documents are read before any
    model loads; a second run on the same store while one is writing is an `IndexBusy`."""
    loaded = read_input(documents)
    exactly = exactly_by_default(documents) if exactly is None else exactly
    with writing(store) as (encoder, target):
        return index_folder(loaded, target, chunking=chunking or Chunking.by_tokens(encoder), exactly=exactly, show_progress=show_progress)


@contextlib.contextmanager
def writing(store: Store) -> Iterator[tuple[Matryoshka2DEncoder, Any]]:
    """The store's writer lock held for the block (else an `IndexBusy`), with the encoder and what to
    write to: the collection, or with `shortlist_dims` a `FunnelIndex` of it and its shortlist collection."""
    lock = store.writer_lock()
    try:
        lock.acquire()
    except Timeout:
        raise IndexBusy(f"another indexing run is writing to {store.location} (lock {lock.lock_file}); let it finish") from None
    try:
        client = store.client()
        encoder = store.resolved_encoder()
        if store.shortlist_dims is None:
            yield encoder, open_collection(encoder, store.collection, client=client, adopt=store.adopt)
        else:
            yield encoder, FunnelIndex(encoder, store.collection, shortlist_dims=store.shortlist_dims, client=client, adopt=store.adopt)
    finally:
        lock.release()


def make_generator(name: str, encoder: Matryoshka2DEncoder | RemoteEncoder, framework: Framework = "langchain") -> Any:
    """`extractive` (offline, no set-up: our `ExtractiveAnswerer`), else a causal language model's hub id
    or folder as `framework`'s own local LLM class (`local_llm`)."""
    if name == EXTRACTIVE:
        return ExtractiveAnswerer(encoder)
    from mm2d_integrations.rag.local_llms import local_llm

    return local_llm(name, framework)


def ask(
    question: str,
    store: Store,
    *,
    framework: Framework = "langchain",
    generator: str | Generator | Any = EXTRACTIVE,
    k: int = 3,
    funnel: Funnel | str | None = None,
) -> Answer:
    """Retrieve `k` chunks for `question` and answer from them, with their sources.

    `generator`: a name for `make_generator`, one of our generators, or any chat model / LLM of `framework`.
    `funnel`: retrieve by funnel (the store indexed with its `shortlist_dims`), not by one search of all
    dimensions; a `Funnel` or its text, such as "64x10".
    """
    if isinstance(funnel, str):
        funnel = Funnel.parse(funnel)
    check_choice("framework", framework, FRAMEWORKS)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    client, encoder, searched = store.open_for_queries(None if funnel is None else funnel.shortlist_dims)
    chosen = make_generator(generator, encoder, framework) if isinstance(generator, str) else generator
    if funnel is not None:
        return _ask_funnel(question, searched, framework, chosen, k, funnel.shortlist_factor)
    if framework == "langchain":
        from langchain_chroma import Chroma

        from mm2d_integrations.langchain import Matryoshka2DEmbeddings
        from mm2d_integrations.rag.langchain_chain import build_rag_chain

        vector_store = Chroma(
            client=client, collection_name=searched.name, embedding_function=Matryoshka2DEmbeddings.from_encoder(encoder),
            create_collection_if_not_exists=False,
        )
        return build_rag_chain(vector_store.as_retriever(search_kwargs={"k": k}), chosen).invoke(question)
    from llama_index.core import VectorStoreIndex
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from mm2d_integrations.llama_index import Matryoshka2DEmbedding
    from mm2d_integrations.rag.llama_index_engine import build_query_engine, to_answer

    vector_index = VectorStoreIndex.from_vector_store(ChromaVectorStore(chroma_collection=searched), embed_model=Matryoshka2DEmbedding.from_encoder(encoder))
    return to_answer(build_query_engine(vector_index, chosen, similarity_top_k=k).query(question))


def _ask_funnel(question: str, funnel_index: FunnelIndex, framework: Framework, generator: Any, k: int, factor: int) -> Answer:
    """`ask` through the funnel retriever of `framework` (`funnel_index`: complete, as `Store.open_for_queries` opens it)."""
    if framework == "langchain":
        from mm2d_integrations.langchain import FunnelRetriever
        from mm2d_integrations.rag.langchain_chain import build_rag_chain

        return build_rag_chain(FunnelRetriever(index=funnel_index, k=k, shortlist_factor=factor), generator).invoke(question)
    from llama_index.core.base.base_query_engine import BaseQueryEngine
    from llama_index.core.query_engine import RetrieverQueryEngine

    from mm2d_integrations.llama_index import FunnelRetriever as LlamaFunnelRetriever
    from mm2d_integrations.rag.llama_index_engine import QA_TEMPLATE, GeneratorQueryEngine, to_answer

    retriever = LlamaFunnelRetriever(funnel_index, similarity_top_k=k, shortlist_factor=factor)
    engine: BaseQueryEngine
    if isinstance(generator, Generator):
        engine = GeneratorQueryEngine(retriever=retriever, generator=generator)
    else:
        engine = RetrieverQueryEngine.from_args(retriever, llm=generator, text_qa_template=QA_TEMPLATE)
    return to_answer(engine.query(question))
