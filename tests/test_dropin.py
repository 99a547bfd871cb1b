"""A drop-in for HuggingFaceEmbeddings (LangChain) and HuggingFaceEmbedding (LlamaIndex) users: their
documented usage, with the class name swapped, gives the anchor's own vectors (both run here on the
packaged MiniLM); what has no equivalent fails, naming the argument."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mm2d_integrations.chroma import Matryoshka2DEmbeddingFunction
from mm2d_integrations.frameworks import compat
from mm2d_integrations.langchain import Matryoshka2DEmbeddings
from mm2d_integrations.llama_index import Matryoshka2DEmbedding
from tests.test_langchain import MINILM

TEXTS = ["I want to Embed this text!", "A man is playing a guitar.\nSomeone plays an instrument.", "Chroma stores vectors.", ""]
QUERY = "What stores vectors?"


def _same(ours: list, theirs: list) -> None:
    ours_array, theirs_array = np.atleast_2d(np.array(ours, np.float32)), np.atleast_2d(np.array(theirs, np.float32))
    assert ours_array.shape == theirs_array.shape
    cosine = (ours_array * theirs_array).sum(1) / np.linalg.norm(ours_array, axis=1) / np.linalg.norm(theirs_array, axis=1)
    assert cosine.min() >= 0.99999
    np.testing.assert_allclose(ours_array, theirs_array, atol=2e-6)


# HuggingFaceEmbeddings' docstring example, then the sentence-transformers usage its field docs point to.
LANGCHAIN_EXAMPLES = {
    "docstring": {"model_kwargs": {"device": "cpu"}, "encode_kwargs": {"normalize_embeddings": False}},
    "defaults": {},
    "prompts by name": {
        "model_kwargs": {"prompts": {"query": "query: ", "passage": "passage: "}},
        "encode_kwargs": {"prompt_name": "passage"},
        "query_encode_kwargs": {"prompt_name": "query"},
    },
    "default prompt name": {"model_kwargs": {"prompts": {"classification": "Classify: "}, "default_prompt_name": "classification"}},
    "encode_kwargs serve queries too": {"encode_kwargs": {"prompt": "search: ", "batch_size": 2, "precision": "float32"}},
    "truncated and normalised": {"model_kwargs": {"truncate_dim": 128, "revision": None}, "encode_kwargs": {"normalize_embeddings": True}},
    "truncated, as the model normalised it": {"encode_kwargs": {"truncate_dim": 64, "normalize_embeddings": False}},
    "progress and cache folder": {"show_progress": True, "cache_folder": None, "multi_process": False},
}


@pytest.mark.parametrize("example", LANGCHAIN_EXAMPLES)
def test_langchain_examples_give_huggingface_embeddings_vectors(example: str) -> None:
    from langchain_huggingface import HuggingFaceEmbeddings

    arguments = LANGCHAIN_EXAMPLES[example]
    theirs = HuggingFaceEmbeddings(model_name=MINILM, **arguments)
    ours = Matryoshka2DEmbeddings(model_name=MINILM, **arguments)
    _same(ours.embed_documents(TEXTS), theirs.embed_documents(TEXTS))
    _same(ours.embed_query(QUERY), theirs.embed_query(QUERY))


# HuggingFaceEmbedding's docstring example, then its documented arguments.
LLAMA_INDEX_EXAMPLES = {
    "docstring": {},
    "instructions": {"query_instruction": "query: ", "text_instruction": "passage: "},
    "truncated": {"truncate_dim": 64, "embed_batch_size": 2},
    "truncated, as the model normalised it": {"truncate_dim": 64, "normalize": False},
    "shorter texts": {"max_length": 8, "device": "cpu", "trust_remote_code": False, "show_progress_bar": True},
    "one process": {"parallel_process": False, "target_devices": None},
}


@pytest.mark.parametrize("example", LLAMA_INDEX_EXAMPLES)
def test_llama_index_examples_give_huggingface_embedding_vectors(example: str) -> None:
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    arguments = LLAMA_INDEX_EXAMPLES[example]
    theirs = HuggingFaceEmbedding(model_name=MINILM, **arguments)
    ours = Matryoshka2DEmbedding(model_name=MINILM, **arguments)
    _same(ours.get_text_embedding(TEXTS[0]), theirs.get_text_embedding(TEXTS[0]))
    _same(ours.get_text_embedding_batch(TEXTS), theirs.get_text_embedding_batch(TEXTS))
    _same(ours.get_query_embedding(QUERY), theirs.get_query_embedding(QUERY))


def test_their_arguments_become_our_fields() -> None:
    langchain = Matryoshka2DEmbeddings(
        model=MINILM, model_kwargs={"truncate_dim": 64, "prompts": {"q": "Q: "}}, query_encode_kwargs={"prompt_name": "q"},
    )
    assert (langchain.dimensions, langchain.query_prompt, langchain.document_prompt) == (64, "Q: ", "")
    assert langchain.model_kwargs == langchain.query_encode_kwargs == {}  # the fields alone describe the encoder
    assert Matryoshka2DEmbeddings(**langchain.model_dump()).encoder.options == langchain.encoder.options
    llama = Matryoshka2DEmbedding(model_name=MINILM, query_instruction="query: ", text_instruction="doc: ", truncate_dim=32)
    assert (llama.query_prompt, llama.document_prompt, llama.dimensions) == ("query: ", "doc: ", 32)
    assert Matryoshka2DEmbedding.from_dict(llama.to_dict()).encoder.options == llama.encoder.options


REFUSED = [
    ({"encode_kwargs": {"precision": "int8"}}, r"encode_kwargs\['precision'\]='int8' has no equivalent.*accepted: 'float32'"),
    ({"query_encode_kwargs": {"precision": "binary"}}, r"query_encode_kwargs\['precision'\]='binary'"),
    ({"encode_kwargs": {"convert_to_tensor": True}}, "encode_kwargs has no equivalent here for convert_to_tensor; accepted: batch_size"),
    ({"encode_kwargs": {"show_progress_bar": True}}, "show_progress field"),
    ({"model_kwargs": {"config_kwargs": {}}}, "model_kwargs has no equivalent here for config_kwargs; accepted: num_layers"),
    ({"model_kwargs": {"backend": "openvino"}}, "backend must be one of torch, onnx, got 'openvino'"),
    ({"model_kwargs": {"token": "hf_x"}}, r"model_kwargs\['token'\]='hf_x' has no equivalent.*HF_TOKEN"),
    ({"multi_process": True}, "multi_process=True has no equivalent here.*pickle"),
    ({"encode_kwargs": {"prompt": "a: ", "prompt_name": "query"}}, "both prompt and prompt_name"),
    ({"encode_kwargs": {"prompt_name": "passage"}}, "prompt name 'passage' is not among the prompts.*query, document"),
    ({"encode_kwargs": {"normalize_embeddings": True}, "query_encode_kwargs": {"normalize_embeddings": False}}, "both set normalize"),
    ({"model_kwargs": {"truncate_dim": 64}, "dimensions": 64}, "dimensions given both as field"),
    ({"model_kwargs": {"truncate_dim": 64, "dimensions": 32}}, "both set dimensions"),
]


@pytest.mark.parametrize(("arguments", "message"), REFUSED)
def test_langchain_arguments_without_equivalent_are_refused(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Matryoshka2DEmbeddings(model=MINILM, **arguments)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"parallel_process": True}, "parallel_process=True has no equivalent"),
        ({"target_devices": ["cpu", "cpu"]}, "target_devices="),
        ({"query_instruction": "a: ", "query_prompt": "b: "}, "query_instruction and query_prompt both set query_prompt"),
        ({"truncate_dim": 64, "dimensions": 64}, "truncate_dim and dimensions both set dimensions"),
    ],
)
def test_llama_index_arguments_without_equivalent_are_refused(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Matryoshka2DEmbedding(model_name=MINILM, **arguments)


def test_unknown_arguments_fail_in_every_adapter() -> None:
    """An argument dropped without a word gives other vectors than the code it was copied from."""
    with pytest.raises(ValueError, match="no_such_field"):
        Matryoshka2DEmbedding(model_name=MINILM, query_instruction="query: ", no_such_field=3)
    with pytest.raises(ValueError, match="no_such_field"):
        Matryoshka2DEmbeddings(model=MINILM, query_encode_kwargs={"prompt": "query: "}, no_such_field=3)
    with pytest.raises(TypeError, match="no_such_field"):
        Matryoshka2DEmbeddingFunction(MINILM, query_prompt="query: ", no_such_field=3)


def test_the_readme_table_names_every_mapped_argument() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    names = [
        *compat.CONSTRUCTOR_ARGUMENTS, *compat.ENCODE_ARGUMENTS, *compat.LLAMA_INDEX_ARGUMENTS, *compat.REFUSED,
        "prompts", "default_prompt_name", "prompt", "prompt_name", "precision", "show_progress", "show_progress_bar",
        "query_encode_kwargs",
    ]
    assert [name for name in names if f"`{name}`" not in readme] == []
