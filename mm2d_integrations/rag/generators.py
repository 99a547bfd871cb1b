"""Answer a question from retrieved passages: the prompt, and the generators this package ships."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mm2d_integrations.encoder import Matryoshka2DEncoder
from mm2d_integrations.runtime import resolve_device

__all__ = ["Answer", "EXTRACTIVE", "ExtractiveAnswerer", "Generator", "NOTHING_RELEVANT", "Passage", "QUESTION_PROMPT", "SYSTEM_PROMPT", "TransformersGenerator", "format_context", "sentences_of", "unique_sources"]

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


class TransformersGenerator:
    """A local transformers model (causal or seq2seq) from a hub id or folder, writing the answer."""

    def __init__(
        self,
        model_name_or_path: str | Path,
        *,
        max_new_tokens: int = 200,
        device: str | None = None,
        trust_remote_code: bool = False,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        location = str(model_name_or_path)
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
        self.is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        model_class = AutoModelForSeq2SeqLM if self.is_seq2seq else AutoModelForCausalLM
        self.device = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
        self.model = model_class.from_pretrained(location, trust_remote_code=trust_remote_code, use_safetensors=True).to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        self.generation_kwargs = {"do_sample": False, **(generation_kwargs or {})}

    def prompt(self, question: str, passages: list[Passage]) -> str:
        user = QUESTION_PROMPT.format(context=format_context(passages), question=question)
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return f"{SYSTEM_PROMPT}\n\n{user}"

    def answer(self, question: str, passages: list[Passage]) -> Answer:
        import torch

        if not passages:
            return Answer(NOTHING_RELEVANT, [])
        limit = getattr(self.model.config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        budget = max(16, min(int(limit), 100_000) - (0 if self.is_seq2seq else self.max_new_tokens))
        tokens = self.tokenizer(self.prompt(question, passages), return_tensors="pt", truncation=True, max_length=budget).to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.inference_mode():
            output = self.model.generate(**tokens, max_new_tokens=self.max_new_tokens, pad_token_id=pad, **self.generation_kwargs)
        new_tokens = output[0] if self.is_seq2seq else output[0, tokens["input_ids"].shape[1] :]
        return Answer(self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip(), unique_sources(passages))
