"""The arguments of the classes users come from, mapped onto encoder options: LangChain's
`HuggingFaceEmbeddings` (langchain-huggingface) and LlamaIndex's `HuggingFaceEmbedding`
(llama-index-embeddings-huggingface), both thin layers over sentence-transformers.

Each of their arguments sets one option, the way sentence-transformers would use it, or is refused
with a ValueError that names it and says what is accepted: an argument silently dropped would give
other vectors than the code it was copied from. Both adapters call this module; README's table of
the mapping says the same in words.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mm2d_integrations.core.checkpoint import saved_prompts
from mm2d_integrations.core.options import EncoderOptions
from mm2d_integrations.core.source import ModelSource

__all__ = [
    "CONSTRUCTOR_ARGUMENTS", "ENCODE_ARGUMENTS", "LLAMA_INDEX_ARGUMENTS", "REFUSED", "from_sentence_transformers",
    "their_arguments",
]

# SentenceTransformer(...) arguments that are options here (LangChain's model_kwargs); `prompts` and
# `default_prompt_name` name prompts for prompt_name, as in sentence-transformers.
CONSTRUCTOR_ARGUMENTS = {
    "device": "device", "revision": "revision", "trust_remote_code": "trust_remote_code",
    "cache_folder": "cache_folder", "truncate_dim": "dimensions",
}
# SentenceTransformer.encode(...) arguments (LangChain's encode_kwargs and query_encode_kwargs), beside
# `prompt`, `prompt_name` and `precision` (float32 only).
ENCODE_ARGUMENTS = {"batch_size": "batch_size", "normalize_embeddings": "normalize", "truncate_dim": "dimensions"}
# LlamaIndex HuggingFaceEmbedding's arguments named otherwise here (device, normalize, max_length,
# trust_remote_code, cache_folder and embed_batch_size are named alike).
LLAMA_INDEX_ARGUMENTS = {
    "query_instruction": "query_prompt", "text_instruction": "document_prompt", "truncate_dim": "dimensions",
    "show_progress_bar": "show_progress",
}

_WORKERS = "pickle the embeddings object to your worker processes instead: it travels as its configuration"
# Their arguments without an equivalent here, with the value that changes nothing, and what to do instead.
REFUSED: dict[str, tuple[Any, str]] = {
    "multi_process": (False, _WORKERS),
    "parallel_process": (False, _WORKERS),
    "target_devices": (None, _WORKERS),
    "token": (None, "log in with `hf auth login` or set HF_TOKEN: options are serialised and must hold no secret"),
}
_QUANTISED = (
    "sentence-transformers' precision quantises the output vectors, which this package does not do "
    "(its compute_precision='bf16' is a faster computation with float32 output)"
)
_DEFAULT_PROMPT_NAMES = ("query", "document")  # sentence-transformers always knows these two ("" unless set)


def their_arguments(data: Any, renamed: Mapping[str, str]) -> Any:
    """An adapter's constructor arguments with the anchor's names `renamed` to options and arguments
    without equivalent refused (or dropped, where given as the value that changes nothing)."""
    if not isinstance(data, Mapping):
        return data
    data = dict(data)
    for name in set(data) & set(REFUSED):
        _refuse(name, data.pop(name), name)
    for theirs, ours in renamed.items():
        if theirs in data:
            if ours in data:
                raise ValueError(f"{theirs} and {ours} both set {ours}; give one")
            data[ours] = data.pop(theirs)
    return data


def from_sentence_transformers(
    model: str,
    model_kwargs: Mapping[str, Any],
    encode_kwargs: Mapping[str, Any] | None = None,
    query_encode_kwargs: Mapping[str, Any] | None = None,
    *,
    revision: str | None = None,
    cache_folder: str | None = None,
) -> dict[str, Any]:
    """The options that HuggingFaceEmbeddings-style arguments set.

    `model_kwargs`: this package's options by name, or SentenceTransformer(...) arguments;
    `encode_kwargs` / `query_encode_kwargs`: encode(...) arguments for documents / queries (queries use
    `encode_kwargs` when `query_encode_kwargs` is empty, as HuggingFaceEmbeddings does). Options that
    documents and queries share (normalize, dimensions) must agree where both give them.
    """
    known = set(EncoderOptions.names()) | set(CONSTRUCTOR_ARGUMENTS)
    _check_keys("model_kwargs", model_kwargs, [*EncoderOptions.names(), *CONSTRUCTOR_ARGUMENTS, "prompts", "default_prompt_name"])
    options: dict[str, Any] = {}
    setters: dict[str, str] = {}
    for key, value in model_kwargs.items():
        if key in known:
            _set(options, setters, CONSTRUCTOR_ARGUMENTS.get(key, key), value, f"model_kwargs[{key!r}]")
    documents = dict(encode_kwargs or {})
    queries = dict(query_encode_kwargs or {}) or documents
    names = _PromptNames(model, model_kwargs, options.get("revision", revision), options.get("cache_folder", cache_folder))
    for argument, given, prompt_option in (
        ("encode_kwargs", documents, "document_prompt"),
        ("query_encode_kwargs" if query_encode_kwargs else "encode_kwargs", queries, "query_prompt"),
    ):
        _check_keys(argument, given, [*ENCODE_ARGUMENTS, "prompt", "prompt_name", "precision"])
        if given.get("precision", "float32") != "float32":
            raise ValueError(f"{argument}['precision']={given['precision']!r} has no equivalent here (accepted: 'float32'): {_QUANTISED}")
        for key, option in ENCODE_ARGUMENTS.items():
            if key in given and not (key == "batch_size" and prompt_option == "query_prompt"):  # a query is one text
                _set(options, setters, option, given[key], f"{argument}[{key!r}]")
        prompt = names.prompt(argument, given)
        if prompt is not None:
            _set(options, setters, prompt_option, prompt, f"{argument} prompt")
    return options


class _PromptNames:
    """sentence-transformers' prompts by name: `prompts` given, then the checkpoint's saved ones
    (read only when a name must be resolved), then "" for query and document."""

    def __init__(self, model: str, model_kwargs: Mapping[str, Any], revision: str | None, cache_folder: str | None) -> None:
        self.model, self.revision, self.cache_folder = model, revision, cache_folder
        self.given = dict(model_kwargs.get("prompts") or {})
        self.default_name = model_kwargs.get("default_prompt_name")

    def prompt(self, argument: str, given: Mapping[str, Any]) -> str | None:
        """The prompt one side of encode(...) gets: `prompt`, else `prompt_name`'s, else the default name's."""
        prompt, name = given.get("prompt"), given.get("prompt_name")
        if prompt is not None and name is not None:
            raise ValueError(f"{argument} gives both prompt and prompt_name; give one")
        if prompt is not None:
            return prompt
        name = self.default_name if name is None else name
        return None if name is None else self.resolve(name)

    def resolve(self, name: str) -> str:
        prompts = {**dict.fromkeys(_DEFAULT_PROMPT_NAMES), **self.given}
        if prompts.get(name) is None:
            saved = saved_prompts(ModelSource(self.model, self.revision, self.cache_folder))
            prompts.update({key: value for key, value in saved.items() if prompts.get(key) is None})
        if name not in prompts:
            raise ValueError(f"prompt name {name!r} is not among the prompts of {self.model!r} and model_kwargs['prompts']: {', '.join(prompts)}")
        return prompts[name] or ""


def _check_keys(argument: str, given: Mapping[str, Any], accepted: list[str]) -> None:
    unknown = sorted(set(given) - set(accepted))
    for key in unknown:
        if key in REFUSED:
            _refuse(key, given[key], f"{argument}[{key!r}]")
    if "show_progress_bar" in unknown:
        raise ValueError(f"{argument}['show_progress_bar'] is the adapter's show_progress field here")
    unknown = [key for key in unknown if key not in REFUSED]
    if unknown:
        raise ValueError(f"{argument} has no equivalent here for {', '.join(unknown)}; accepted: {', '.join(accepted)}")


def _refuse(name: str, value: Any, where: str) -> None:
    """A ValueError for an argument without equivalent, unless it has the value that changes nothing."""
    inert, instead = REFUSED[name]
    if value != inert:
        raise ValueError(f"{where}={value!r} has no equivalent here (accepted: {inert!r}): {instead}")


def _set(options: dict[str, Any], setters: dict[str, str], option: str, value: Any, setter: str) -> None:
    """Set `option` once: a second argument may repeat the value, not change it."""
    if option in options and options[option] != value:
        raise ValueError(f"{setters[option]}={options[option]!r} and {setter}={value!r} both set {option}; give one value")
    options.setdefault(option, value)
    setters.setdefault(option, setter)
