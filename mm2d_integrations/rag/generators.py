"""Answer a question from retrieved passages: the prompt, and the generators this package ships."""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mm2d_integrations.core.encoder import Matryoshka2DEncoder
from mm2d_integrations.retrieval.documents import document_source

__all__ = ["Answer", "EXTRACTIVE", "ExtractiveAnswerer", "Generator", "NOTHING_RELEVANT", "Passage", "QUESTION_PROMPT", "SYSTEM_PROMPT", "format_context", "sentences_of", "unique_sources"]

SYSTEM_PROMPT = (
    "You answer questions about the company's internal documents. Use only the context below. "
    "Cite the sources you used in square brackets. If the context does not answer the question, say so."
)
QUESTION_PROMPT = "Context:\n{context}\n\nQuestion: {question}\nAnswer:"
EXTRACTIVE = "extractive"  # the name of the offline generator, `ExtractiveAnswerer`
NOTHING_RELEVANT = "Nothing relevant to this question was found in the indexed documents."


@dataclass(frozen=True)
class Passage:
    text: str
    source: str

    @classmethod
    def retrieved(cls, text: str, metadata: Mapping[str, Any] | None, document_id: str | None) -> Passage:
        """A retrieved document's text under its source: the loaders' metadata keys, else its id
        (`documents.document_source`), else a hash of its text, so that an answer never cites an unnamed source."""
        source = document_source(metadata, document_id) or f"text:{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"
        return cls(text, source)


@dataclass(frozen=True)
class Answer:
    text: str
    sources: list[str]
    """Files the answer rests on, relative to the indexed folder, most relevant first."""


def unique_sources(passages: list[Passage]) -> list[str]:
    return list(dict.fromkeys(passage.source for passage in passages))


def format_context(passages: list[Passage]) -> str:
    """The retrieved text as the generator sees it: each passage under its source."""
    return "\n\n".join(f"[{passage.source}]\n{passage.text}" for passage in passages)


@runtime_checkable
class Generator(Protocol):
    """Turns a question and its retrieved passages into an answer."""

    def answer(self, question: str, passages: list[Passage]) -> Answer: ...


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_MARKUP = re.compile(r"^\s*(?:[-*+>#]+|\d+[.)])\s+|\*\*|__|`")


def sentences_of(text: str) -> list[str]:
    """Sentences and list items of a chunk, without Markdown markup; fragments of under 3 words dropped."""
    cleaned = (_MARKUP.sub("", part).strip() for part in _SENTENCE_END.split(text))
    return [sentence for sentence in cleaned if len(sentence.split()) >= 3]


class ExtractiveAnswerer:
    """Zero set-up, offline: answers with the retrieved sentences closest to the question.

    Sentences are scored with the same encoder that retrieved them; those within `margin` of the
    best make the answer, each followed by its source. When no sentence reaches `min_score`, it
    says that nothing relevant was found. Sentence vectors are cached (chunks recur across questions).
    """

    def __init__(
        self, encoder: Matryoshka2DEncoder, *, max_sentences: int = 3, min_score: float = 0.4, margin: float = 0.12,
        cache_size: int = 20_000,
    ) -> None:
        self.encoder = encoder
        self.max_sentences = max_sentences
        self.min_score = min_score
        self.margin = margin
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _sentence_vectors(self, sentences: list[str]) -> np.ndarray:
        with self._lock:
            missing = [sentence for sentence in dict.fromkeys(sentences) if sentence not in self._cache]
        computed = dict(zip(missing, self.encoder.encode_documents(missing))) if missing else {}
        with self._lock:
            self._cache.update(computed)
            vectors = np.stack([self._cache[sentence] for sentence in sentences])
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return vectors

    def answer(self, question: str, passages: list[Passage]) -> Answer:
        sentences = [(sentence, passage.source) for passage in passages for sentence in sentences_of(passage.text)]
        sentences = list(dict.fromkeys(sentences))  # chunks overlap
        if not sentences:
            return Answer(NOTHING_RELEVANT, [])
        scores = self._sentence_vectors([text for text, _ in sentences]) @ self.encoder.encode_queries([question])[0]
        best = float(scores.max())
        if best < self.min_score:
            return Answer(NOTHING_RELEVANT, [])
        ranked = [int(i) for i in np.argsort(-scores)[: self.max_sentences] if scores[i] >= best - self.margin]
        chosen = [sentences[i] for i in ranked]
        text = "\n".join(f"{sentence} [{source}]" for sentence, source in chosen)
        return Answer(text, list(dict.fromkeys(source for _, source in chosen)))
