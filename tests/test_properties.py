"""Property-based tests of what the encoder and the splitter take: any text (control characters, lone
surrogates, emoji, whitespace), any prompt, any list length, any chunk size. A bounded number of examples,
on a tiny model, so that they run with the rest of the suite."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.retrieval.documents import Chunking, SourceDocument, split_documents
from tests.tiny_models import build_tiny_model

MAX_LENGTH = 24  # small, so that truncation is met often
BOUNDED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ANY_CHARACTER = st.characters(exclude_categories=())  # lone surrogates included
# Words, spaces, line breaks and paragraph breaks (where the splitter cuts), and any character at all.
PIECES = st.one_of(st.sampled_from(["turbine", "grid", " ", "\n", "\n\n", "  ", "\t", "é", "漢字", "🚀", "\x00"]), st.text(ANY_CHARACTER, max_size=12))
TEXT = st.lists(PIECES, max_size=40).map("".join)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    folder = tmp_path_factory.mktemp("tiny-bert")
    build_tiny_model(folder, "bert", minilm_path, pooling="mean", include_prompt=False)
    return folder


@pytest.fixture(scope="module")
def encoder(tiny: Path) -> Iterator[Matryoshka2DEncoder]:
    """The tiny model, watched: every sequence its embeddings see is recorded in `seen_lengths`."""
    encoder = Matryoshka2DEncoder(tiny, max_length=MAX_LENGTH, batch_size=3)
    seen: list[int] = []
    hook = encoder.loaded_model.model.get_input_embeddings().register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    encoder.seen_lengths = seen  # type: ignore[attr-defined]
    yield encoder
    hook.remove()


@BOUNDED
@given(texts=st.lists(TEXT, max_size=7), prompt=TEXT)
@example(texts=["ȴ"], prompt="turbineturbine")  # was a zero vector: the text merged with the prompt's last word, all pooled out
@example(texts=["a"], prompt="\ud800")  # was a tokenizer TypeError: lone surrogates were replaced in texts only
def test_any_texts_and_prompt_give_unit_vectors_each_as_if_alone_never_longer_than_max_length(
    encoder: Matryoshka2DEncoder, texts: list[str], prompt: str
) -> None:
    encoder.seen_lengths.clear()  # type: ignore[attr-defined]
    vectors = encoder.encode(texts, prompt=prompt)
    assert vectors.shape == (len(texts), encoder.dimensions) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert max(encoder.seen_lengths, default=0) <= MAX_LENGTH  # type: ignore[attr-defined]
    for text, vector in zip(texts, vectors):  # batching and padding change nothing
        np.testing.assert_allclose(encoder.encode([text], prompt=prompt)[0], vector, atol=1e-5)


@BOUNDED
@given(texts=st.lists(TEXT, min_size=1, max_size=4), num_layers=st.integers(1, 4), dimensions=st.integers(1, 32))
def test_any_depth_and_width_give_that_many_unit_components(encoder: Matryoshka2DEncoder, texts: list[str], num_layers: int, dimensions: int) -> None:
    vectors = encoder.with_dimensions(dimensions).encode(texts, num_layers=num_layers)
    assert vectors.shape == (len(texts), dimensions) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def _non_space(text: str) -> Counter[str]:
    return Counter(character for character in text if not character.isspace())


def _check_chunks(documents: list[SourceDocument], chunking: Chunking) -> None:
    """Chunks within the size, each a piece of its document with more than whitespace, together holding
    every character that is not whitespace; ids stable and distinct."""
    chunks = split_documents(documents, chunking)
    assert [chunk.id for chunk in chunks] == [chunk.id for chunk in split_documents(documents, chunking)]
    assert len({chunk.id for chunk in chunks}) == len(chunks)
    for document in documents:
        own = [chunk for chunk in chunks if chunk.source == document.source]
        assert [chunk.index for chunk in own] == list(range(len(own)))
        for chunk in own:
            assert chunk.text.strip() and chunk.text in document.text
            assert chunking.length(chunk.text) <= chunking.size, (chunk.text, chunking)
        held = _non_space("".join(chunk.text for chunk in own))
        assert not _non_space(document.text) - held  # nothing lost


@BOUNDED
@given(texts=st.lists(TEXT, max_size=3), size=st.integers(1, 120), overlap_share=st.floats(0, 0.99))
@example(texts=[" "], size=1, overlap_share=0.0)  # was a chunk of one space
@example(texts=["\ud800"], size=1, overlap_share=0.0)  # a lone surrogate: its chunk id was a UnicodeEncodeError
def test_any_text_is_cut_into_pieces_within_the_size_and_nothing_is_lost(texts: list[str], size: int, overlap_share: float) -> None:
    documents = [SourceDocument(f"doc{number}.md", text) for number, text in enumerate(texts)]
    _check_chunks(documents, Chunking(size, int(size * overlap_share)))


@BOUNDED
@given(text=TEXT)
def test_chunks_cut_by_tokens_fit_the_models_max_length_whole(encoder: Matryoshka2DEncoder, text: str) -> None:
    chunking = Chunking.by_tokens(encoder)
    _check_chunks([SourceDocument("doc.md", text)], chunking)
    for chunk in split_documents([SourceDocument("doc.md", text)], chunking):
        assert encoder.token_count([encoder.document_prompt + chunk.text])[0] + 2 <= encoder.max_length  # [CLS] and [SEP]


@BOUNDED
@given(size=st.integers(-5, 5), overlap=st.integers(-5, 10))
def test_a_chunking_that_cannot_cut_is_refused_naming_the_rule(size: int, overlap: int) -> None:
    if 1 <= size and 0 <= overlap < size:
        Chunking(size, overlap)
    else:
        with pytest.raises(ValueError, match=r"chunk size must be an int >= 1 and overlap an int in \[0, size\), got size=-?\d+, overlap=-?\d+"):
            Chunking(size, overlap)
