"""Hostile and careless input (docs/reliability.md): folders holding things that are not files, and
limits that follow the model. Readers run in subprocesses with a timeout, so that a reader that blocks
fails the test instead of hanging it."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.cli import main
from mm2d_integrations.retrieval.documents import read_document
from tests.test_langchain import MINILM
from tests.tiny_models import build_tiny_model

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))


def _device(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root makes device files")
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's device


def _link_loop(path: Path) -> None:
    path.symlink_to(path.with_name("y.txt"))
    path.with_name("y.txt").symlink_to(path)


def _locked_folder(path: Path) -> None:
    path.mkdir()
    (path / "c.txt").write_text("Behind a folder nobody may list.", encoding="utf-8")
    path.chmod(0)


LOOP = "symbolic link loop (not followed)"
# name -> (what makes it, the reason it is listed with, the error when it is given as the corpus itself)
HOSTILE: dict[str, tuple[Any, dict[str, str], str]] = {
    "fifo.txt": (_fifo, {"fifo.txt": "not a regular file (FIFO)"}, "is a FIFO, not a folder of documents or a file of texts"),
    "sock.txt": (_socket, {"sock.txt": "not a regular file (socket)"}, "is a socket, not a folder of documents or a file of texts"),
    "null.txt": (_device, {"null.txt": "not a regular file (character device)"}, "is a character device, not a folder"),
    "x.txt": (_link_loop, {"x.txt": LOOP, "y.txt": LOOP}, "x.txt' does not exist"),
    "locked": (_locked_folder, {"locked": "unreadable folder (PermissionError: Permission denied)"}, "locked' cannot be read (Permission denied)"),
}


def hostile_folder(base: Path, names: Iterable[str]) -> dict[str, str]:
    """Fill `base` with two readable documents and the `HOSTILE` entries `names`; return what each
    entry is listed as skipped with."""
    (base / "sub").mkdir()
    (base / "a.txt").write_text("A readable note about turbines.", encoding="utf-8")
    (base / "sub" / "b.md").write_text("Another readable note about batteries.", encoding="utf-8")
    expected: dict[str, str] = {}
    for name in names:
        make, skipped, _as_corpus = HOSTILE[name]
        make(base / name)
        expected.update(skipped)
    return expected


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder that an unprivileged user can reach (pytest's own are private to their owner) and
    short enough a path for a Unix socket."""
    base = Path(tempfile.mkdtemp(prefix="mm2d-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        if (base / "locked").exists():
            (base / "locked").chmod(0o700)
        shutil.rmtree(base)


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter with this checkout's package, stopped after TIMEOUT_S."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return run_python("import sys; from mm2d_integrations.cli import main; sys.exit(main(sys.argv[1:]))", *argv)


READERS = """
import contextlib, io, json, os, sys, traceback
from pathlib import Path
import langchain_text_splitters  # imported before the process gives up root, which owns the interpreter's folder
from mm2d_integrations.retrieval.documents import load_folder
from mm2d_integrations.training.adapt import read_corpus

if os.geteuid() == 0:  # as nobody, so that folder modes apply (root reads every folder)
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)

def error(call):
    try:
        call()
    except Exception as raised:
        return f"{type(raised).__name__}: {raised}"

def read(folder, entry):
    loaded = load_folder(folder)
    return {
        "documents": sorted(document.source for document in loaded.documents),
        "skipped": dict(loaded.skipped),
        "corpus": read_corpus(folder),
        "entry as corpus": error(lambda: read_corpus(folder / entry)),
    }

for entry, folder in json.loads(sys.argv[1]).items():  # one line per case, written as soon as it is read
    with contextlib.redirect_stderr(io.StringIO()) as warned:  # what the readers warn while reading this case
        try:
            got = read(Path(folder), entry)
        except Exception:
            got = {"traceback": traceback.format_exc()}
    print(json.dumps({"entry": entry, "stderr": warned.getvalue(), **got}), flush=True)
"""


@pytest.fixture(scope="module")
def folders_read() -> Iterator[dict[str, Any]]:
    """Each `HOSTILE` entry in a folder of its own (beside two readable documents), all read by one
    unprivileged child process: entry -> (what it is listed as skipped with, what the child read, the
    child's own stderr), or a pytest skip where the entry cannot be made here. The child writes each
    case's result as it finishes, so a reader that blocks (stopped at TIMEOUT_S) fails its own case."""
    base = Path(tempfile.mkdtemp(prefix="mm2d-"))  # reachable by nobody, short enough a path for a Unix socket
    base.chmod(0o755)
    cases: dict[str, Any] = {}
    folders: dict[str, str] = {}
    try:
        for number, entry in enumerate(HOSTILE):
            case = base / str(number)
            case.mkdir()
            case.chmod(0o755)
            try:
                cases[entry] = hostile_folder(case, [entry])
            except pytest.skip.Exception as skipped:
                cases[entry] = skipped
            else:
                folders[entry] = str(case)
        try:
            done = run_python(READERS, json.dumps(folders))
            stdout, stderr = done.stdout, f"exit status {done.returncode}: {done.stderr}"
        except subprocess.TimeoutExpired as stopped:
            stdout, stderr = _text(stopped.stdout), f"stopped after {TIMEOUT_S} s: {_text(stopped.stderr)}"
        read = {got["entry"]: got for got in map(json.loads, stdout.splitlines())}
        yield {entry: expected if entry not in folders else (expected, read.get(entry), stderr) for entry, expected in cases.items()}
    finally:
        for locked in base.glob("*/locked"):
            locked.chmod(0o700)
        shutil.rmtree(base)


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


@pytest.mark.parametrize("entry", HOSTILE)
def test_the_folder_readers_read_regular_files_only_and_list_the_rest(folders_read: dict[str, Any], entry: str) -> None:
    """`load_folder` (`mm2d index`) and `read_corpus` (`mm2d adapt --corpus`): a FIFO, a socket or a
    device is never opened, link loops and folders that cannot be listed are skipped, the rest is read."""
    if isinstance(folders_read[entry], pytest.skip.Exception):
        pytest.skip(folders_read[entry].msg)
    expected, got, child_stderr = folders_read[entry]
    assert got is not None, f"the readers never finished {entry!r} ({child_stderr})"
    assert "traceback" not in got, got["traceback"]
    assert (got["documents"], got["skipped"]) == (["a.txt", "sub/b.md"], expected)
    assert got["corpus"] == ["A readable note about turbines.", "Another readable note about batteries."]
    assert all(f"  {path}: {why}" in got["stderr"] for path, why in expected.items())  # the warning lists them
    assert HOSTILE[entry][2] in got["entry as corpus"]


def test_a_file_that_became_a_device_after_listing_is_not_read() -> None:
    """The reader checks what it opens again (a file replaced by a FIFO or a device since it was listed)."""
    assert read_document(Path("/dev"), "null") == "not a regular file (character device)"


def test_mm2d_index_skips_what_is_not_a_regular_file_and_indexes_the_rest(folder: Path, tmp_path: Path) -> None:
    """The table's rows as the command line meets them: a FIFO once hung it, a link loop was a traceback."""
    entries = ["fifo.txt", "sock.txt", "x.txt", *(["null.txt"] if os.geteuid() == 0 else [])]
    expected = hostile_folder(folder, entries)
    done = run_cli("index", str(folder), "--persist-dir", str(tmp_path / "chroma"), "--model", MINILM)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("2 files, 2 chunks: 2 embedded and added")
    assert all(f"skipped {path}: {why}" in done.stdout for path, why in expected.items()), done.stdout


def model_copy(model: Path | str, folder: Path, changes: dict[str, dict[str, Any] | bytes]) -> Path:
    """`model` as a folder of links to its files, with `changes`: a dict is merged into that JSON file
    ({"config.json": {"hidden_size": 0}}), bytes replace the file."""
    folder.mkdir()
    for path in Path(model).iterdir():
        (folder / path.name).symlink_to(path, target_is_directory=path.is_dir())
    for name, changed in changes.items():
        file = folder / name
        content = json.loads(file.read_text()) if file.exists() and not isinstance(changed, bytes) else {}
        file.unlink(missing_ok=True)
        file.write_bytes(changed if isinstance(changed, bytes) else json.dumps({**content, **changed}).encode())
    return folder


LONG_TEXT = " ".join(f"word{number % 50}" for number in range(600))  # about 1,800 tokens


def test_a_max_length_the_models_positions_cannot_take_is_refused_before_the_weights_load(tmp_path: Path) -> None:
    """MiniLM has 512 positions: 1000 once passed, then a 600-word text failed inside the model."""
    unloadable = model_copy(MINILM, tmp_path / "minilm", {"model.safetensors": b"not weights"})
    with pytest.raises(ValueError, match=r"^max_length must be an int in \[1, 512\], got 1000$"):
        Matryoshka2DEncoder(unloadable, max_length=1000)  # refused before the (broken) weights are read
    with pytest.raises(FileNotFoundError, match="could not load the weights"):
        Matryoshka2DEncoder(unloadable, max_length=512)
    Matryoshka2DEncoder(MINILM)
    with pytest.raises(ValueError, match=r"^max_length must be an int in \[1, 512\], got 513$"):
        Matryoshka2DEncoder(MINILM, max_length=513)  # the model already loaded in this process
    encoder = Matryoshka2DEncoder(MINILM, max_length=512)
    assert encoder.encode([LONG_TEXT]).shape == (1, 384)


def test_mm2d_refuses_a_max_length_over_the_models_positions_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", "a", "b", "--model", MINILM, "--max-length", "1000"]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "mm2d: error: max_length must be an int in [1, 512], got 1000\n")


def test_a_checkpoints_max_seq_length_over_its_positions_is_lowered_with_a_warning(tmp_path: Path) -> None:
    large = model_copy(MINILM, tmp_path / "minilm", {"sentence_bert_config.json": {"max_seq_length": 100000}})
    with pytest.warns(UserWarning, match=r"says max_seq_length=100000, more than the 512 tokens its position embeddings take: max_length is 512"):
        encoder = Matryoshka2DEncoder(large)
    assert encoder.max_length == 512
    np.testing.assert_allclose(encoder.encode([LONG_TEXT]), Matryoshka2DEncoder(MINILM, max_length=512).encode([LONG_TEXT]), atol=1e-5)


# architecture -> the tokens its tiny model's positions take (tests/tiny_models.py): RoBERTa-style models
# keep padding_idx + 1 positions below their first token. ModernBERT (rotary, 8,192 positions) is left out: too long to run here.
POSITION_LIMITS = {"bert": 128, "distilbert": 512, "roberta": 128, "mpnet": 128, "electra": 128}


@pytest.mark.parametrize("architecture", POSITION_LIMITS)
def test_max_length_reaches_each_architectures_last_position_and_no_further(architecture: str, tmp_path: Path, minilm_path: Path) -> None:
    build_tiny_model(tmp_path, architecture, minilm_path, pooling="mean")
    limit = POSITION_LIMITS[architecture]
    with pytest.raises(ValueError, match=rf"max_length must be an int in \[1, {limit}\], got {limit + 1}"):
        Matryoshka2DEncoder(tmp_path, max_length=limit + 1)
    encoder = Matryoshka2DEncoder(tmp_path, max_length=limit)
    assert np.isfinite(encoder.encode([LONG_TEXT, "short"])).all()


BAD_CONFIGS = {
    "hidden_size 0": ({"config.json": {"hidden_size": 0}}, "has hidden_size=0 in config.json; it must be a positive int"),
    "no attention heads": ({"config.json": {"num_attention_heads": 0}}, "has num_attention_heads=0 in config.json"),
    "a str for a size": ({"config.json": {"intermediate_size": "1536"}}, "has intermediate_size='1536' in config.json"),
    "max_seq_length 0": ({"sentence_bert_config.json": {"max_seq_length": 0}}, "has max_seq_length=0 in sentence_bert_config.json"),
}


@pytest.mark.parametrize("row", BAD_CONFIGS)
def test_a_config_with_impossible_sizes_is_a_clear_error(row: str, tmp_path: Path) -> None:
    changes, message = BAD_CONFIGS[row]
    with pytest.raises(ValueError, match=re.escape(message)):
        Matryoshka2DEncoder(model_copy(MINILM, tmp_path / "model", changes))
