"""A local transformers model as the chosen framework's own LLM class: LangChain's `HuggingFacePipeline`
(langchain-huggingface), LlamaIndex's `HuggingFaceLLM` (llama-index-llms-huggingface). Prompting,
context packing and generation are theirs; this module only builds them offline-friendly and greedy."""

from __future__ import annotations

from typing import Any

from mm2d_integrations.core.validation import install_hint
from mm2d_integrations.rag import Framework

__all__ = ["MAX_NEW_TOKENS", "local_llm"]

MAX_NEW_TOKENS = 200


def local_llm(model: str, framework: Framework, *, max_new_tokens: int = MAX_NEW_TOKENS) -> Any:
    """The framework's LLM for a causal language model's hub id or folder, decoding greedily: LangChain's
    truncates a prompt longer than the tokenizer's limit; LlamaIndex's is told the model's context, into
    which its query engine packs the retrieved text."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    context = next(
        (int(value) for name in ("max_position_embeddings", "n_positions") if isinstance(value := getattr(config, name, None), int)), 2048
    )
    generation = {"do_sample": False}
    if framework == "langchain":
        try:
            from langchain_huggingface import HuggingFacePipeline
        except ImportError as error:
            raise ImportError(install_hint("langchain_huggingface", "llm")) from error
        return HuggingFacePipeline.from_model_id(
            model_id=model, task="text-generation",
            pipeline_kwargs={**generation, "max_new_tokens": max_new_tokens, "return_full_text": False,
                             "truncation": True},
        )
    try:
        from llama_index.llms.huggingface import HuggingFaceLLM
    except ImportError as error:
        raise ImportError(install_hint("llama_index.llms.huggingface", "llm")) from error
    return HuggingFaceLLM(
        model_name=model, tokenizer_name=model, context_window=context, max_new_tokens=max_new_tokens,
        generate_kwargs=generation, device_map="auto",
    )
