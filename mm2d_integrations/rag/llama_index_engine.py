"""The LlamaIndex query engine over the same Chroma collection, with our generators or any LLM."""

from __future__ import annotations

from typing import Any

from llama_index.core import PromptTemplate, VectorStoreIndex
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import RESPONSE_TYPE, Response
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import NodeWithScore

from mm2d_integrations.rag.generators import QUESTION_PROMPT, SYSTEM_PROMPT, Answer, Generator, Passage, unique_sources

__all__ = ["GeneratorQueryEngine", "QA_TEMPLATE", "build_query_engine", "to_answer", "to_passages"]

QA_TEMPLATE = PromptTemplate(
    SYSTEM_PROMPT + "\n\n" + QUESTION_PROMPT.replace("{context}", "{context_str}").replace("{question}", "{query_str}")
)


def to_passages(nodes: list[NodeWithScore]) -> list[Passage]:
    return [Passage.retrieved(node.node.get_content(), node.node.metadata, node.node.node_id) for node in nodes]


class GeneratorQueryEngine(CustomQueryEngine):
    """Retrieves with `retriever`, answers with one of this package's generators."""

    retriever: BaseRetriever
    generator: Any

    def custom_query(self, query_str: str) -> Response:
        nodes = self.retriever.retrieve(query_str)
        answer = self.generator.answer(query_str, to_passages(nodes))
        return Response(answer.text, source_nodes=nodes, metadata={"sources": answer.sources})


def build_query_engine(index: VectorStoreIndex, generator: Any, *, similarity_top_k: int = 3) -> BaseQueryEngine:
    """A query engine; `generator` is one of ours (`Generator`) or any LlamaIndex LLM."""
    if isinstance(generator, Generator):
        return GeneratorQueryEngine(retriever=index.as_retriever(similarity_top_k=similarity_top_k), generator=generator)
    return index.as_query_engine(llm=generator, similarity_top_k=similarity_top_k, text_qa_template=QA_TEMPLATE)


def to_answer(response: RESPONSE_TYPE) -> Answer:
    """Our answer from a query engine's response (a whole one: neither engine here streams)."""
    if not isinstance(response, Response):
        raise TypeError(f"expected a whole Response (streaming=False), got {type(response).__name__}")
    sources = (response.metadata or {}).get("sources")
    return Answer(str(response.response or "").strip(), sources if sources is not None else unique_sources(to_passages(response.source_nodes)))
