"""The LangChain RAG chain (LCEL): retriever -> prompt with the retrieved text and sources -> generator."""

from __future__ import annotations

from typing import Any

from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough

from mm2d_integrations.rag.generators import (
    QUESTION_PROMPT,
    SYSTEM_PROMPT,
    Answer,
    Generator,
    Passage,
    format_context,
    unique_sources,
)

__all__ = ["PROMPT", "build_rag_chain", "to_passages"]

PROMPT = ChatPromptTemplate.from_messages([("system", SYSTEM_PROMPT), ("human", QUESTION_PROMPT)])


def to_passages(documents: list[Document]) -> list[Passage]:
    return [Passage.retrieved(document.page_content, document.metadata, document.id) for document in documents]


def build_rag_chain(retriever: Runnable[str, list[Document]], generator: Any) -> Runnable[str, Answer]:
    """question -> Answer. `generator` is one of ours (`Generator`) or any LangChain chat model / LLM."""
    retrieve = RunnableParallel(question=RunnablePassthrough(), passages=retriever | RunnableLambda(to_passages))
    if isinstance(generator, Generator):
        return retrieve | RunnableLambda(lambda state: generator.answer(state["question"], state["passages"]))
    write = (
        RunnableLambda(lambda state: {"context": format_context(state["passages"]), "question": state["question"]})
        | PROMPT
        | generator
        | StrOutputParser()
    )
    return retrieve | RunnableParallel(text=write, passages=lambda state: state["passages"]) | RunnableLambda(
        lambda state: Answer(state["text"].strip(), unique_sources(state["passages"]))
    )
