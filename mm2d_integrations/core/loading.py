"""Load a checkpoint with only the layers we keep.

The transformer is loaded with its config cut to `num_layers`, so the dropped layers' weights are
never materialised; loaded models are shared by every encoder of this process that asks for the
same checkpoint, depth, device and dtype. A pass that needs fewer layers than were loaded (queries
at their own, shallower depth) runs a view of the model that stops there, sharing every weight.
"""

from __future__ import annotations

import copy
import functools
import threading
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mm2d_integrations.core.checkpoint import KNOWN_MODELS, ModelSettings, read_sentence_transformers_settings
from mm2d_integrations.core.dense import DenseStack, read_dense_stack
from mm2d_integrations.core.exit_heads import ExitHeads, read_exit_heads
from mm2d_integrations.core.pooling import POOLING_MODES
from mm2d_integrations.core.source import ModelSource
from mm2d_integrations.core.validation import check_int_in_range

__all__ = [
    "ARCHITECTURES", "LayerStack", "LoadedModel", "architecture_of", "check_max_length", "cut_config", "layer_list", "load_model", "position_limit",
    "shallow_view",
]


@dataclass(frozen=True)
class LayerStack:
    """Where an architecture keeps its transformer layers, and what follows them."""

    layers_path: tuple[str, ...]
    count_attribute: str
    final_norm: str | None = None


_BERT_STYLE = LayerStack(("encoder", "layer"), "num_hidden_layers")
ARCHITECTURES: dict[str, LayerStack] = {
    "bert": _BERT_STYLE,
    "roberta": _BERT_STYLE,
    "xlm-roberta": _BERT_STYLE,
    "camembert": _BERT_STYLE,
    "mpnet": _BERT_STYLE,
    "electra": _BERT_STYLE,
    "distilbert": LayerStack(("transformer", "layer"), "n_layers"),
    "modernbert": LayerStack(("layers",), "num_hidden_layers", final_norm="final_norm"),
}


# Architectures whose position ids start after the padding index, as RoBERTa's do: padding_idx + 1 of
# their position embeddings never hold a token.
_POSITIONS_AFTER_PADDING = frozenset({"roberta", "xlm-roberta", "camembert", "mpnet"})
NO_POSITION_LIMIT = 1 << 20  # where a config names no position embeddings (rotary models may)
# config.json sizes that must be positive ints (BERT-style names, then DistilBERT's).
_SIZES = (
    "hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "max_position_embeddings", "vocab_size",
    "dim", "hidden_dim", "n_heads", "n_layers",
)


def position_limit(config: Any) -> int:
    """Tokens a text can take in this model, special tokens included: its position embeddings, less
    those a RoBERTa-style model keeps below its padding index."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions < 1:
        return NO_POSITION_LIMIT
    if getattr(config, "model_type", "") in _POSITIONS_AFTER_PADDING:
        positions -= int(getattr(config, "pad_token_id", None) or 0) + 1
    return max(1, positions)


def check_max_length(max_length: Any, limit: int) -> int | None:
    """`max_length` (None: the checkpoint's) within [1, `limit`], the model's `position_limit`: a longer
    text would fail inside the model."""
    return None if max_length is None else check_int_in_range("max_length", max_length, 1, limit)


def _check_sizes(raw_config: dict[str, Any], model_name: str) -> None:
    """Refuse sizes that would fail deep in the model's own code (hidden_size 0 was a ZeroDivisionError)."""
    for key in _SIZES:
        value = raw_config.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model {model_name!r} has {key}={value!r} in config.json; it must be a positive int")


def architecture_of(config: Any, model_name: str) -> LayerStack:
    stack = ARCHITECTURES.get(getattr(config, "model_type", ""))
    if stack is None:
        raise ValueError(
            f"model {model_name!r} has architecture {config.model_type!r}, whose layers this package "
            f"cannot drop; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return stack


def layer_list(model: torch.nn.Module, stack: LayerStack) -> torch.nn.ModuleList:
    module: Any = model
    for attribute in stack.layers_path:
        module = getattr(module, attribute)
    return module


def cut_config(config: Any, stack: LayerStack, depth: int) -> None:
    """Make `config` describe the first `depth` layers only."""
    setattr(config, stack.count_attribute, depth)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:depth]


def shallow_view(
    model: PreTrainedModel, stack: LayerStack, depth: int, last_layers: Sequence[torch.nn.Module] = (), below: torch.nn.Module | None = None
) -> PreTrainedModel:
    """`model` running only its first `depth` layers: shallow copies of the modules on the way to the
    layer list, which holds the first `depth` layer modules themselves, so that no weight is copied
    (the last ones replaced by `last_layers`, when given: an exit layer, or the layers of a distilled
    student; every one before those, or before the last one, by `below`, when given: a module that hands
    on their output, kept from an earlier pass, while an exit layer trains).

    For passes that read the last hidden state only: asked for hidden states, transformers would hook
    the shared layers a second time.
    """
    view = copy.copy(model)
    view.config = copy.deepcopy(model.config)
    cut_config(view.config, stack, depth)
    parent: torch.nn.Module = view
    for attribute in stack.layers_path[:-1]:
        parent._modules = dict(parent._modules)  # the copy's own children, so replacing one leaves the model as it is
        child = copy.copy(parent._modules[attribute])
        assert child is not None, f"{attribute!r} is a module on the way to the layers"
        parent._modules[attribute] = child
        parent = child
    parent._modules = dict(parent._modules)
    kept = list(layer_list(model, stack))[:depth]
    if len(last_layers) > depth:
        raise ValueError(f"{len(last_layers)} layers cannot replace the last of {depth}")
    kept[depth - len(last_layers) :] = last_layers
    if below is not None:  # it stands in for the layers before the replaced ones, or before the last one
        handed_on = depth - max(1, len(last_layers))
        kept[:handed_on] = [below] * handed_on
    parent._modules[stack.layers_path[-1]] = torch.nn.ModuleList(kept)
    return view


@dataclass
class LoadedModel:
    """A tokenizer and a transformer cut to `num_layers`, shared by every encoder that asks for it."""

    source: ModelSource
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    stack: LayerStack
    max_layers: int
    num_layers: int
    settings: ModelSettings
    position_limit: int  # the longest max_length its position embeddings take
    exit_heads: ExitHeads = field(default_factory=ExitHeads)  # learned by `mm2d adapt`; none for most models
    dense: DenseStack = field(default_factory=DenseStack)  # sentence-transformers Dense modules; none for most models
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)
    _views: dict[int, PreTrainedModel] = field(default_factory=dict, repr=False)
    sessions: dict[str, Any] = field(default_factory=dict)  # other backends' runners of this model, made on first use

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def output_size(self) -> int:
        """The vectors' full width: the last Dense module's output, else the hidden size."""
        return self.dense.out_features or self.hidden_size

    @functools.cached_property
    def weights_id(self) -> str:
        base = self.source.weights_id()  # a local folder's hash covers its exit heads file too
        return f"{base}+dense:{self.dense.weights_id()}" if len(self.dense) else base

    @property
    def layers(self) -> torch.nn.ModuleList:
        return layer_list(self.model, self.stack)

    def cut(self, depth: int) -> PreTrainedModel:
        """The model running its first `depth` layers (see `shallow_view`), the last one the depth's exit
        layer where it has one; itself at the loaded depth otherwise."""
        exit_layer = self.exit_heads.layers.get(depth)
        if depth == self.num_layers and exit_layer is None:
            return self.model
        if depth not in self._views:  # two threads may both build one: equal views, either will do
            self._views[depth] = shallow_view(
                self.model, self.stack, check_int_in_range("depth", depth, 1, self.num_layers), () if exit_layer is None else (exit_layer,)
            )
        return self._views[depth]

    @property
    def final_norm(self) -> torch.nn.Module | None:
        return getattr(self.model, self.stack.final_norm) if self.stack.final_norm else None


# Weak: a model leaves with the last encoder that holds it, so this holds no more than live encoders do.
_cache: weakref.WeakValueDictionary[tuple, LoadedModel] = weakref.WeakValueDictionary()
_cache_lock = threading.Lock()


def load_model(
    name_or_path: str | Path,
    *,
    num_layers: int | None,
    device: torch.device,
    dtype: torch.dtype,
    revision: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    cache_folder: str | None = None,
    show_progress: bool = False,
    depth_argument: str = "num_layers",
    max_length: int | None = None,
) -> LoadedModel:
    """Load (or reuse from this process) the checkpoint cut to `num_layers` on `device` in `dtype`;
    transformers' loading progress bar only with `show_progress`.

    `depth_argument`: the caller's name for `num_layers`, as an out-of-range error names it.
    `max_length`: the caller's, refused (before the weights load) where the model's positions cannot take it.
    """
    source = ModelSource(name_or_path, revision, cache_folder)
    key = (source.location, revision, cache_folder, num_layers, str(device), dtype, trust_remote_code, allow_pickle)
    with _cache_lock:
        loaded = _cache.get(key)
        if loaded is None:
            loaded = _load(source, num_layers, device, dtype, trust_remote_code, allow_pickle, show_progress, depth_argument, max_length)
            _cache[key] = loaded
            if num_layers is None:
                _cache[key[:3] + (loaded.num_layers,) + key[4:]] = loaded
        check_max_length(max_length, loaded.position_limit)
        return loaded


def _load(
    source: ModelSource,
    num_layers: int | None,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool,
    allow_pickle: bool,
    show_progress: bool,
    depth_argument: str,
    max_length: int | None,
) -> LoadedModel:
    raw_config = source.json("config.json")
    if raw_config is None:
        raise FileNotFoundError(f"model {source.name!r} has no config.json")
    _check_sizes(raw_config, source.name)
    if raw_config.get("auto_map") and not trust_remote_code:
        raise ValueError(
            f"model {source.name!r} needs its own Python code (auto_map in config.json); "
            "it is not run unless you pass trust_remote_code=True"
        )
    _check_weights(source, allow_pickle)
    hub = {"revision": source.revision, "cache_dir": source.cache_dir, "trust_remote_code": trust_remote_code}
    config = AutoConfig.from_pretrained(source.location, **hub)
    stack = architecture_of(config, source.name)
    max_layers = int(getattr(config, stack.count_attribute))
    kept = max_layers if num_layers is None else check_int_in_range(depth_argument, num_layers, 1, max_layers)
    limit = position_limit(config)
    check_max_length(max_length, limit)
    cut_config(config, stack, kept)
    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # the dropped layers' weights are 'unused' on purpose
    if not show_progress:
        transformers.logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(
            source.location,
            config=config,
            **hub,
            use_safetensors=None if allow_pickle else True,
            dtype=dtype,
        )
    except (OSError, SafetensorError) as error:  # missing, or damaged
        raise FileNotFoundError(f"could not load the weights of model {source.name!r}: {error}") from error
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()
    if len(layer_list(model, stack)) != kept:
        raise RuntimeError(f"model {source.name!r} loaded with the wrong number of layers")
    tokenizer = AutoTokenizer.from_pretrained(source.location, **hub)
    if tokenizer.pad_token_id is None:  # padded positions are masked out, so any id pads: 0, as ever
        tokenizer.pad_token_id = 0
    known = KNOWN_MODELS.get(source.name, ModelSettings())
    settings = read_sentence_transformers_settings(source).filled_from(known)
    settings = replace(settings, max_length=_checkpoint_max_length(source.name, settings.max_length, tokenizer, limit))
    if settings.pooling is not None and settings.pooling not in POOLING_MODES:
        raise ValueError(f"model {source.name!r} asks for unknown pooling {settings.pooling!r}")
    model = model.to(device).eval()
    return LoadedModel(
        source=source,
        tokenizer=tokenizer,
        model=model,
        stack=stack,
        max_layers=max_layers,
        num_layers=kept,
        settings=settings,
        position_limit=limit,
        exit_heads=read_exit_heads(source, max_layers, int(config.hidden_size), device, layer_list(model, stack)),
        dense=read_dense_stack(source, settings.dense or (), int(config.hidden_size), device, allow_pickle),
    )


def _check_weights(source: ModelSource, allow_pickle: bool) -> None:
    """Refuse pickle-only checkpoints (they can run code when loaded) unless the caller opts in."""
    if source.local_dir is None:
        return  # transformers' use_safetensors=True refuses them on the hub path
    names = {path.name for path in source.local_dir.iterdir()}
    if any(name.endswith(".safetensors") or name == "model.safetensors.index.json" for name in names):
        return
    pickles = sorted(name for name in names if name.endswith((".bin", ".pt", ".pth", ".ckpt")))
    if not pickles:
        raise FileNotFoundError(f"model folder {source.name!r} holds no weights (no *.safetensors file)")
    if not allow_pickle:
        raise ValueError(
            f"model folder {source.name!r} has only pickle weights ({', '.join(pickles)}), which can run "
            "code when loaded; convert them to safetensors or pass allow_pickle=True if you trust them"
        )


def _checkpoint_max_length(model_name: str, saved: Any, tokenizer: PreTrainedTokenizerBase, limit: int) -> int:
    """The checkpoint's own max length (sentence-transformers' max_seq_length, else its tokenizer's),
    lowered with a warning to what its positions take."""
    if saved is None:
        said = tokenizer.model_max_length  # a huge number where the tokenizer says nothing
        return min(said if isinstance(said, int) and 0 < said < 100_000 else 512, limit)
    if isinstance(saved, bool) or not isinstance(saved, int) or saved < 1:
        raise ValueError(f"model {model_name!r} has max_seq_length={saved!r} in sentence_bert_config.json; it must be a positive int")
    if saved > limit:
        warnings.warn(
            f"model {model_name!r} says max_seq_length={saved}, more than the {limit} tokens its position embeddings take: "
            f"max_length is {limit}",
            stacklevel=2,
        )
        return limit
    return saved
