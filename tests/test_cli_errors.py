"""Every command, every bad input: one line on stderr, the right exit status, nothing half-written.

Exit status: 2 for bad input (arguments, files, models, a missing index), 1 for a store that cannot
be used now (damaged folder, server down, another run writing), 130 when interrupted.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

import mm2d_integrations.core.loading as loading
from mm2d_integrations.chroma import chroma_client
from mm2d_integrations.cli import main
from mm2d_integrations.samples import SAMPLE_DOCS
from tests.test_langchain import MINILM
from tests.test_reliability import stop_when
from tests.tiny_models import build_tiny_model

DOCS = SAMPLE_DOCS


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = int(exit.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input must be refused before any model is loaded."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(loading, "_load", refuse)


@pytest.fixture
def sts_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.tsv"
    path.write_text("5.0\ta cat sits\ta cat is sitting\n0.0\ta cat sits\tstocks fell\n", encoding="utf-8")
    return path


BAD_ARGUMENTS = {
    "a word for an int": (["embed", "a", "b", "--layers", "x"], "argument --num-layers/--layers: invalid int value: 'x'"),
    "unknown option": (["embed", "a", "b", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    "missing argument": (["embed", "a"], "the following arguments are required: text_b"),
    "unknown framework": (["ask", "q", "--framework", "haystack"], "argument --framework: invalid choice: 'haystack'"),
    "k not an int": (["ask", "q", "-k", "three"], "argument -k: invalid int value: 'three'"),
    "unknown eval task": (["eval", "glue", "x"], "argument task: invalid choice: 'glue'"),
    "unknown adapt method": (["adapt", "--corpus", "x", "--out", "y", "--method", "magic"], "argument --method: invalid choice: 'magic'"),
}


@pytest.mark.parametrize("row", BAD_ARGUMENTS, ids=list(BAD_ARGUMENTS))
def test_malformed_arguments_are_one_line_and_status_2(row: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv, message = BAD_ARGUMENTS[row]
    code, out, err = run(argv, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert message in err and "--help" in err


def _bad_values(tmp_path: Path, sts_file: Path) -> dict[str, tuple[list[str], str]]:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x", encoding="utf-8")
    model = ["--model", MINILM]
    return {
        "depth out of range": (["embed", "a", "b", *model, "--layers", "7"], "num_layers must be an int in [1, 6], got 7"),
        "dimensions out of range": (["embed", "a", "b", *model, "--dims", "0"], "dimensions must be an int in [1, 384], got 0"),
        "batch size 0": (["embed", "a", "b", *model, "--batch-size", "0"], "batch_size must be an int in [1, 1048576], got 0"),
        "max length 0": (["embed", "a", "b", *model, "--max-length", "0"], "max_length must be an int in [1, 512], got 0"),
        "unknown pooling": (["embed", "a", "b", *model, "--pooling", "median"], "pooling must be one of cls, mean, max"),
        "unknown dtype": (["embed", "a", "b", *model, "--dtype", "float8"], "dtype must be one of float32"),
        "unknown compute precision": (["embed", "a", "b", *model, "--compute-precision", "int3"], "compute_precision must be one of float32, bf16"),
        "missing model folder": (["embed", "a", "b", "--model", str(tmp_path / "nothing/here")], "does not exist"),
        "missing documents folder": (["index", str(tmp_path / "nope"), *model], "document folder"),
        "a file as documents folder": (["index", str(sts_file), *model], f"document folder {str(sts_file)!r} is a file, not a folder"),
        "collection name Chroma refuses": (["index", str(DOCS), *model, "--collection", "c"], "collection name must be 3-512 characters"),
        "collection name with spaces": (["ask", "q", "--collection", "my docs"], "collection name must be 3-512 characters"),
        "k 0": (["ask", "q", "-k", "0", "--persist-dir", str(tmp_path / "none")], "k must be an int >= 1, got 0"),
        "bad funnel": (["ask", "q", "--funnel", "64y10"], "a funnel is SHORTLIST_DIMSxFACTOR"),
        "missing STS file": (["eval", "sts", str(tmp_path / "none.tsv"), *model], f"STS file {str(tmp_path / 'none.tsv')!r} does not exist"),
        "plot not png": (["eval", "sts", str(sts_file), *model, "--plot", str(tmp_path / "grid.jpg")], "--plot must name a .png file"),
        "json folder missing": (["eval", "sts", str(sts_file), *model, "--json", str(tmp_path / "no" / "g.json")], "does not exist"),
        "missing BEIR folder": (["eval", "retrieval", str(tmp_path / "nope"), *model], "is not a folder"),
        "missing corpus": (["adapt", "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "out"), *model], "corpus"),
        "out not empty": (["adapt", "--corpus", str(sts_file), "--out", str(tmp_path / "full"), *model], "exists and is not an empty folder"),
    }


def test_bad_values_are_one_line_and_status_2_before_any_model_loads(
    tmp_path: Path, sts_file: Path, capsys: pytest.CaptureFixture[str], no_model_loads: None
) -> None:
    loaded_first = {"depth out of range", "dimensions out of range", "max length 0", "unknown pooling"}  # need the model's limits
    for row, (argv, message) in _bad_values(tmp_path, sts_file).items():
        if row in loaded_first:
            continue
        code, _out, err = run(argv, capsys)
        assert (row, code, err.count("\n")) == (row, 2, 1), err
        assert message in err, (row, err)


def test_bad_values_that_need_the_model_are_one_line_and_status_2(tmp_path: Path, sts_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _bad_values(tmp_path, sts_file)
    for row in ("depth out of range", "dimensions out of range", "max length 0", "unknown pooling"):
        argv, message = rows[row]
        code, _out, err = run(argv, capsys)
        assert (row, code, err.count("\n")) == (row, 2, 1), err
        assert message in err, (row, err)


def test_ask_without_an_index_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_model_loads: None) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["ask", "What is the return window?"], capsys)
    assert (code, out) == (2, "")
    assert err == "mm2d: error: no index at .mm2d/chroma (collection 'mm2d'): run mm2d index DIR first\n"
    assert list(tmp_path.iterdir()) == []
    code, _, err = run(["ask", "q", "--funnel", "64x10"], capsys)
    assert code == 2 and "run mm2d index DIR --shortlist-dims 64 first" in err and list(tmp_path.iterdir()) == []


def test_ask_names_a_missing_collection_and_creates_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    persist = tmp_path / "chroma"
    chroma_client(persist).create_collection("other")
    code, _, err = run(["ask", "q", "--persist-dir", str(persist), "--collection", "docs"], capsys)
    assert code == 2 and err == f"mm2d: error: no index at {persist} (collection 'docs'): run mm2d index DIR first\n"
    assert [collection.name for collection in chroma_client(persist).list_collections()] == ["other"]


def test_a_server_that_is_down_is_status_1(capsys: pytest.CaptureFixture[str], no_model_loads: None) -> None:
    port = str(_free_port())
    for argv in (["ask", "q", "--chroma-port", port], ["index", str(DOCS), "--chroma-host", "127.0.0.1", "--chroma-port", port]):
        code, _, err = run(argv, capsys)
        assert code == 1 and err.count("\n") == 1 and "no Chroma server answers at" in err, err


def test_a_damaged_chroma_folder_is_status_1_and_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_loads: None) -> None:
    damaged = tmp_path / "chroma"
    damaged.mkdir()
    (damaged / "chroma.sqlite3").write_bytes(b"not a database at all" * 100)
    for argv in (["ask", "q", "--persist-dir", str(damaged)], ["index", str(DOCS), "--persist-dir", str(damaged)]):
        code, _, err = run(argv, capsys)
        assert code == 1 and err.count("\n") == 1 and "cannot be opened" in err and "move it aside" in err, err
    assert (damaged / "chroma.sqlite3").read_bytes() == b"not a database at all" * 100


def test_a_second_index_run_on_the_same_store_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_loads: None) -> None:
    persist = tmp_path / "chroma"
    persist.mkdir()
    with FileLock(persist / "mm2d-index.lock"):  # what a running `mm2d index` holds
        code, _, err = run(["index", str(DOCS), "--persist-dir", str(persist)], capsys)
    assert code == 1 and err.count("\n") == 1 and "another indexing run is writing to" in err, err


def test_commands_show_no_model_loading_bar_unless_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["embed", "a", "b", "--model", MINILM], capsys)
    assert code == 0 and err == ""
    code, _, err = run(["embed", "a", "b", "--model", MINILM, "--layers", "5", "--verbose"], capsys)  # another depth: a new load
    assert code == 0 and "Loading weights" in err


def test_demo_loads_the_model_once_and_prints_no_bars(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    loads = []
    real = loading._load
    monkeypatch.setattr(loading, "_load", lambda *args: loads.append(args[0]) or real(*args))
    monkeypatch.setattr(loading, "_cache", type(loading._cache)())  # nothing loaded before this test counts
    code, out, err = run(["demo", "--model", MINILM, "--layers", "4"], capsys)
    assert code == 0 and out.count("Q: ") == 4 and err == ""
    assert len(loads) == 1


def test_ctrl_c_during_adapt_leaves_no_output_folder(tmp_path: Path) -> None:
    build_tiny_model(tmp_path / "tiny", "bert", Path(MINILM), pooling="mean")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"sentence number {index} about topic {index % 17}\n" for index in range(4000)), encoding="utf-8")
    out = tmp_path / "adapted"
    command = [sys.executable, "-m", "mm2d_integrations.cli", "adapt", "--corpus", str(corpus), "--out", str(out), "--model", str(tmp_path / "tiny"), "--verbose"]
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = stop_when(process, rb"embedding: +[0-9]+%", signal.SIGINT)
    # 130 as a rule; about one run in ten here the process, having printed its message and cleaned up,
    # still ends killed by SIGINT (-2) during interpreter shutdown: an open bug (docs/reliability.md)
    assert process.wait(timeout=120) in (130, -signal.SIGINT) and b"interrupted" in err and b"Traceback" not in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus.txt", "tiny"]  # no output, no staging folder
