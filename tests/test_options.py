"""One list of encoder options: the encoder, both adapters, Chroma's config and the CLI derive from it;
adapters wrap the encoder they are given."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from mm2d_integrations import EncoderOptions, Matryoshka2DEncoder
from mm2d_integrations.cli import build_parser
from mm2d_integrations.core.options import option_specs
from mm2d_integrations.langchain import Matryoshka2DEmbeddings
from mm2d_integrations.llama_index import Matryoshka2DEmbedding
from tests.tiny_models import build_tiny_model, copy_as_hub_cache


def test_unknown_options_are_named_with_the_valid_ones(minilm_path: Path) -> None:
    with pytest.raises(TypeError, match="unknown encoder option.*no_such_option.*valid: num_layers, dimensions"):
        Matryoshka2DEncoder(minilm_path, no_such_option=1)
    with pytest.raises(TypeError, match="no_such_option"):
        EncoderOptions.of(no_such_option=1)


def test_an_options_object_and_overrides_build_the_same_encoder(minilm_path: Path) -> None:
    options = EncoderOptions(num_layers=2, dimensions=64, query_prompt="q: ")
    by_object = Matryoshka2DEncoder(minilm_path, options, batch_size=4)
    by_name = Matryoshka2DEncoder(minilm_path, num_layers=2, dimensions=64, query_prompt="q: ", batch_size=4)
    assert by_object.options == by_name.options and by_object.batch_size == 4
    np.testing.assert_array_equal(by_object.encode_queries(["x"]), by_name.encode_queries(["x"]))


def test_every_option_is_a_field_of_both_adapters() -> None:
    names = set(EncoderOptions.names())
    assert names <= set(Matryoshka2DEmbeddings.model_fields)
    assert names - {"batch_size"} <= set(Matryoshka2DEmbedding.model_fields)  # LlamaIndex's is embed_batch_size
    for spec in option_specs():
        field = Matryoshka2DEmbeddings.model_fields[spec.name]
        assert (field.default, field.description) == (spec.default, spec.help)


def test_every_option_is_a_flag_of_every_model_command() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command in ("embed", "index", "ask", "demo"):
        flags = {flag for action in commands[command]._actions for flag in action.option_strings}
        for spec in option_specs():
            missing = set(spec.flags) - flags - ({"--no-" + spec.name.replace("_", "-")} if spec.kind is bool else set())
            assert not missing, f"mm2d {command} lacks {missing}"
    args = parser.parse_args(["embed", "a", "b", "--layers", "2", "--dims", "8", "--no-normalize", "--max-batch-tokens", "64"])
    from mm2d_integrations.cli.options import options_from

    assert options_from(args) == EncoderOptions(num_layers=2, dimensions=8, normalize=False, max_batch_tokens=64)


def test_options_round_trip_through_the_encoder(minilm_path: Path) -> None:
    given = EncoderOptions(
        num_layers=3, dimensions=96, pooling="cls", normalize=False, query_prompt="q: ", document_prompt="d: ",
        max_length=64, batch_size=7, max_batch_tokens=200, device="cpu", dtype="float32", compute_precision="float32",
    )
    assert Matryoshka2DEncoder(minilm_path, given).options == given


def _pickle_only_model(folder: Path, minilm_path: Path) -> Path:
    model = build_tiny_model(folder, "bert", minilm_path)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("adapter", [Matryoshka2DEmbeddings, Matryoshka2DEmbedding])
def test_from_encoder_wraps_an_encoder_that_could_not_be_rebuilt_by_default(adapter: type, tmp_path: Path, minilm_path: Path) -> None:
    encoder = Matryoshka2DEncoder(_pickle_only_model(tmp_path / "pickle", minilm_path), allow_pickle=True, num_layers=2, max_batch_tokens=300)
    wrapped = adapter.from_encoder(encoder)
    assert wrapped.encoder is encoder
    assert (wrapped.allow_pickle, wrapped.num_layers, wrapped.max_batch_tokens) == (True, 2, 300)
    expected = encoder.encode_queries(["a question"])[0]
    embed = wrapped.embed_query if adapter is Matryoshka2DEmbeddings else wrapped.get_query_embedding
    np.testing.assert_array_equal(np.array(embed("a question"), np.float32), expected)
    # A copy by fields rebuilds the same encoder (allow_pickle travels as a field).
    fields = {name: getattr(wrapped, name) for name in ("model_name", "allow_pickle", "num_layers")}
    assert adapter(**fields).encoder.options == Matryoshka2DEncoder(fields["model_name"], allow_pickle=True, num_layers=2).options


_REVISION_SCRIPT = """
import numpy as np
from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.chroma import Matryoshka2DEmbeddingFunction
from mm2d_integrations.langchain import Matryoshka2DEmbeddings
from mm2d_integrations.llama_index import Matryoshka2DEmbedding

encoder = Matryoshka2DEncoder("owner/tiny", revision="{other}")
default = Matryoshka2DEncoder("owner/tiny")
assert not np.allclose(encoder.encode_documents(["x"]), default.encode_documents(["x"]))
for adapter in (Matryoshka2DEmbeddings, Matryoshka2DEmbedding):
    wrapped = adapter.from_encoder(encoder)
    assert wrapped.encoder is encoder and wrapped.revision == "{other}", adapter
function = Matryoshka2DEmbeddingFunction(encoder=encoder)
config = function.get_config()
assert config["revision"] == "{other}" and config["model"] == "owner/tiny" and config["weights"] == "commit:{other}", config
rebuilt = Matryoshka2DEmbeddingFunction.build_from_config(config)
np.testing.assert_array_equal(rebuilt(["x"])[0], function(["x"])[0])
print("ok")
"""


def test_from_encoder_keeps_the_hub_revision(tmp_path: Path, minilm_path: Path) -> None:
    main, other = "a" * 40, "b" * 40
    build_tiny_model(tmp_path / "main", "bert", minilm_path, pooling="mean", seed=0)
    build_tiny_model(tmp_path / "other", "bert", minilm_path, pooling="mean", seed=1)
    copy_as_hub_cache(tmp_path / "main", tmp_path / "cache", "owner/tiny", commit=main)
    (tmp_path / "cache" / "models--owner--tiny" / "snapshots" / other).symlink_to(tmp_path / "other")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path)}
    script = _REVISION_SCRIPT.replace("{other}", other)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_options_are_plain_data() -> None:
    options = EncoderOptions(device=torch.device("cpu"), dtype=torch.bfloat16)  # type: ignore[arg-type]
    assert (options.device, options.dtype) == ("cpu", "bfloat16")
    assert options.model_dump() == options.as_dict()
    assert set(options.to_config()) == set(EncoderOptions.names()) - {"trust_remote_code", "allow_pickle", "cache_folder", "show_progress"}
    assert EncoderOptions(cache_folder=Path("/tmp/models")).cache_folder == "/tmp/models"


def test_cache_folder_is_where_hub_ids_are_found(tmp_path: Path, minilm_path: Path) -> None:
    """sentence-transformers' and LlamaIndex's cache_folder: a hub cache other than the default one."""
    build_tiny_model(tmp_path / "tiny", "bert", minilm_path, pooling="mean")
    copy_as_hub_cache(tmp_path / "tiny", tmp_path / "cache", "owner/tiny-cached", commit="c" * 40)
    with pytest.raises((OSError, ValueError)):
        Matryoshka2DEncoder("owner/tiny-cached")  # offline, and not in the default cache
    encoder = Matryoshka2DEncoder("owner/tiny-cached", cache_folder=tmp_path / "cache")
    assert encoder.fingerprint["weights"] == "commit:" + "c" * 40 and encoder.options.cache_folder == str(tmp_path / "cache")
    np.testing.assert_allclose(encoder.encode_documents(["x"]), Matryoshka2DEncoder(tmp_path / "tiny").encode_documents(["x"]), atol=1e-6)


@pytest.mark.parametrize("adapter", ["langchain", "llama_index"])
def test_the_adapters_fields_are_written_in_source_an_editor_reads(adapter: str) -> None:
    """Every option field of an adapter is declared in a class statement (EncoderOptions, inherited), not
    by a class built at run time: editors and type checkers see `num_layers` on the adapter."""
    import importlib
    import inspect

    cls = getattr(importlib.import_module(f"mm2d_integrations.{adapter}"), "Matryoshka2DEmbeddings" if adapter == "langchain" else "Matryoshka2DEmbedding")
    assert issubclass(cls, EncoderOptions)
    for klass in cls.__mro__:
        declared = set(vars(klass).get("__annotations__", {}))
        if declared & set(EncoderOptions.names()):
            source = inspect.getsource(klass)  # OSError for a class built at run time
            assert all(f"    {name}: " in source for name in declared & set(EncoderOptions.names()))
    assert typing.get_type_hints(cls)["num_layers"] == int | None
