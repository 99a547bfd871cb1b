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
from mm2d_integrations.serving.remote import RemoteEncoder

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

    def __str__(self) -> str:
        """The text, then its sources one a line (as `mm2d ask` prints it)."""
        return "\n".join([self.text, "sources:" if self.sources else "sources: none", *(f"  {source}" for source in self.sources)])


def unique_sources(passages: list[Passage]) -> list[str]:
    return list(dict.fromkeys(passage.source for passage in passages))


def format_context(passages: list[Passage]) -> str:
    """The retrieved text as the generator sees it: each passage under its source."""
    return "\n\n".join(f"[{passage.source}]\n{passage.text}" for passage in passages)


@runtime_checkable
class Generator(Protocol):
    """Turns a question and its retrieved passages into an answer."""

    def answer(self, question: str, passages: list[Passage]) -> Answer: ...


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_MARKUP = re.compile(r"^\s*(?:[-*+>#]+|\d+[.)])\s+|\*\*|__|`")
_BULLET = re.compile(r"^\s*[-*+]\s")
_CLOSING = "\"'”’)\\]*_"
_PROSE_END = re.compile(rf"[.!?;][{_CLOSING}]*$")
_QUESTION_END = re.compile(rf"\?[{_CLOSING}]*$")
_MARKDOWN_HEADING = re.compile(r"^\s{0,3}#{1,6}\s")
_RULE = re.compile(r"^[\s|:=-]*[=-]{3,}[\s|:=-]*$")  # a table's separator row, a setext underline, a thematic break
_FIELD = re.compile(r"^[A-Z][a-z]+(?: [a-z]+){0,2}: \S")  # "Release owner: ...", "Date: ..."
_QUANTITY = re.compile(r"(?<![\w-])(?!(?:19|20)\d\d\b)\d|(?<![\w-])-\d")  # a number that is not a year nor part of a name (TM-2, Q3)
_YEAR = re.compile(r"\b(?:19|20)\d\d\b")
_QUANTITY_QUESTION = re.compile(
    r"\bhow (?:many|much|long|far|big|large|heavy|fast|soon|quickly|often|old|high|low)\b|\bwhen\b"
    r"|\bwhat (?:time|date|day|year|percentage|share|price|cost|rate)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[\w£€%+.,-]+")
_LABEL, _LEAD_IN, _BARE, _STATEMENT = "label", "lead-in", "bare", "statement"


def _kind(line: str) -> str:
    """`_LABEL`: a heading in capitals; `_LEAD_IN`: a line that ends by introducing what follows (its
    last sentence ends with a colon); `_BARE`: a line with neither sentence punctuation nor a quantity,
    which heads a section or a table where it stands first; else `_STATEMENT`."""
    letters = [character for character in line if character.isalpha()]
    if letters and not any(character.islower() for character in letters):
        return _LABEL
    if line.endswith(":"):
        return _LEAD_IN
    if _PROSE_END.search(line) or _FIELD.match(line) or _QUANTITY.search(line):
        return _STATEMENT
    return _BARE


def _names(question: str) -> set[str]:
    """The words of a question, after its first, with a capital or a digit (UK, Volta, 2026, 4.2), in lower case."""
    words = (word.strip(".,?") for word in _WORD.findall(question)[1:])
    return {word.casefold() for word in words if any(character.isupper() or character.isdigit() for character in word)}


def _is_lead_in(sentence: str) -> bool:
    """A sentence that only announces what follows ("Three needs came up again and again:"); one with a
    quantity states something ("Complete the modules within 14 days of starting:")."""
    return sentence.endswith(":") and not _QUANTITY.search(sentence)


def _statement_lines(text: str) -> list[tuple[str, str]]:
    """The lines of a chunk that state something, without their markup, each with the heading it stands
    under in the chunk (the last run of headings and table header rows before it, or ""): no headings
    (Markdown, in capitals, or a bare line opening a section) and no table header rows."""
    raw = [line.rstrip() for line in text.splitlines()]
    kept: list[tuple[str, str]] = []
    heading: list[str] = []
    labels, in_rows = 0, False  # labels in a row since the last statement; after a row or list item

    def label(line: str) -> None:
        nonlocal labels, in_rows
        heading[:] = [*heading[-1:], line] if labels else [line]
        labels, in_rows = labels + 1, False

    for number, line in enumerate(raw):
        following = raw[number + 1] if number + 1 < len(raw) else ""
        if not line.strip():
            labels, in_rows = 0, False
            continue
        if _RULE.match(line):
            continue
        cleaned = _MARKUP.sub("", line).strip()
        if _MARKDOWN_HEADING.match(line) or _RULE.match(following):  # a heading, a table's header row, a setext heading
            label(cleaned)
            continue
        if line.lstrip().startswith("|"):  # a Markdown table's data row
            kept.append((" | ".join(cell.strip() for cell in cleaned.strip("|").split("|") if cell.strip()), " ".join(heading)))
            labels, in_rows = 0, True
            continue
        kind = _kind(cleaned)
        if kind == _BARE and not _BULLET.match(line):
            # a bare line heads what follows when it opens a paragraph, or when it opens a block (a section
            # heading) or follows one (a table's header row); after a row or a list item it is one too
            opens_prose = bool(_PROSE_END.search(_MARKUP.sub("", following).strip()))
            kind = _LABEL if opens_prose or (not in_rows and labels < 2) else _STATEMENT
        if kind == _LABEL:
            label(cleaned)
            continue
        kept.append((cleaned, " ".join(heading)))  # a lead-in's sentences before its last one may state something
        if kind == _LEAD_IN:  # it heads what follows
            labels = 0
            label(_SENTENCE_END.split(cleaned)[-1])
        else:
            labels, in_rows = 0, not _PROSE_END.search(cleaned)
    return kept


def _candidates(text: str) -> list[tuple[str, str]]:
    """The sentences, list items and table rows of a chunk that can answer, each with its context: in
    an FAQ the question it answers first, else the heading (or table header) it stands under."""
    found = []
    for line, heading in _statement_lines(text):
        asked = ""
        for part in _SENTENCE_END.split(line):
            sentence = _MARKUP.sub("", part).strip()
            if _QUESTION_END.search(sentence):
                asked = sentence
            elif (len(sentence.split()) >= 3 or _QUANTITY.search(sentence)) and not _is_lead_in(sentence):
                # a field ("Date: ...") is about the document: its heading is the title, which matches every question on it
                found.append((sentence, asked or ("" if _FIELD.match(sentence) else heading)))
                asked = ""
    return found


def sentences_of(text: str) -> list[str]:
    """The sentences, list items and table rows of a chunk that can answer: without Markdown markup,
    headings, table header rows, lead-ins or questions (an FAQ's own question repeats the asker's: it
    answers nothing); fragments of under 3 words without a quantity dropped."""
    return [sentence for sentence, _ in _candidates(text)]


class ExtractiveAnswerer:
    """Zero set-up, offline: answers with the retrieved sentences closest to the question.

    Candidates are the sentences, list items and table rows of the passages (`sentences_of`: never a
    heading, a table header or a question). Each is scored with the same encoder that retrieved it,
    read in its context (the heading or table header it stands under, the FAQ question it answers),
    plus small terms for what cosine similarity misses (`QUANTITY_WEIGHT`, `NAME_WEIGHT`,
    `OTHER_YEAR_PENALTY`); those within `margin` of the best make the answer, each followed by its
    source. When no sentence reaches `min_score` similarity, it says that nothing relevant was found.
    Sentence vectors are cached (chunks recur across questions).
    """

    QUANTITY_WEIGHT = 0.1
    """Added to a sentence with a quantity when the question asks for one (how many, how long, when ...)."""
    NAME_WEIGHT = 0.15
    """Times the share of the question's names and numbers (UK, Volta, 2026, 4.2) that the sentence or its context names."""
    OTHER_YEAR_PENALTY = 0.2
    """Taken from a sentence that names years, none of them the question's: it is about another period."""

    def __init__(
        self, encoder: Matryoshka2DEncoder | RemoteEncoder, *, max_sentences: int = 3, min_score: float = 0.4, margin: float = 0.12,
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

    def _adjustments(self, question: str, candidates: list[tuple[str, str, str]]) -> np.ndarray:
        """What the question's form says of each (sentence, context, source): `QUANTITY_WEIGHT`,
        `NAME_WEIGHT` and `OTHER_YEAR_PENALTY`."""
        wants_quantity = bool(_QUANTITY_QUESTION.search(question))
        names = _names(question)
        asked_years = set(_YEAR.findall(question))
        adjustments = np.zeros(len(candidates))
        for number, (sentence, context, _) in enumerate(candidates):
            if wants_quantity and _QUANTITY.search(sentence):
                adjustments[number] += self.QUANTITY_WEIGHT
            if names:
                said = f"{context} {sentence}".casefold()
                adjustments[number] += self.NAME_WEIGHT * sum(name in said for name in names) / len(names)
            years = set(_YEAR.findall(sentence))
            if asked_years and years and not years & asked_years:
                adjustments[number] -= self.OTHER_YEAR_PENALTY
        return adjustments

    def answer(self, question: str, passages: list[Passage]) -> Answer:
        contexts: dict[tuple[str, str], str] = {}
        for passage in passages:
            for sentence, context in _candidates(passage.text):
                contexts.setdefault((sentence, passage.source), context)  # chunks overlap
        if not contexts:
            return Answer(NOTHING_RELEVANT, [])
        candidates = [(sentence, context, source) for (sentence, source), context in contexts.items()]
        read = [f"{context}: {sentence}" if context else sentence for sentence, context, _ in candidates]
        similarity = self._sentence_vectors(read) @ self.encoder.encode_queries([question])[0]
        if float(similarity.max()) < self.min_score:
            return Answer(NOTHING_RELEVANT, [])
        scores = similarity + self._adjustments(question, candidates)
        best = float(scores.max())
        ranked = [int(i) for i in np.argsort(-scores)[: self.max_sentences] if scores[i] >= best - self.margin]
        chosen = [(candidates[i][0], candidates[i][2]) for i in ranked]
        text = "\n".join(f"{sentence} [{source}]" for sentence, source in chosen)
        return Answer(text, list(dict.fromkeys(source for _, source in chosen)))
