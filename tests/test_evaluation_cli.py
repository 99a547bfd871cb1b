from __future__ import annotations

import json
from pathlib import Path

import pytest

from mm2d_integrations.cli import main
from mm2d_integrations.evaluation.datasets import StsPairs
from tests.conftest import GRADED_PAIRS
from tests.test_evaluation_datasets import write_sts_retrieval_set

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_schema(path: Path, task: str, metric: str, cells: set[tuple[int, int]]) -> dict:
    written = json.loads(path.read_text(encoding="utf-8"))
    assert list(written) == ["model", "task", "metric", "results", "seconds"]
    assert isinstance(written["model"], str) and isinstance(written["seconds"], float) and written["seconds"] > 0
    assert (written["task"], written["metric"]) == (task, metric)
    for row in written["results"]:
        assert list(row) == ["layers", "dimensions", "score"]
        assert type(row["layers"]) is int and type(row["dimensions"]) is int and type(row["score"]) is float
    assert {(row["layers"], row["dimensions"]) for row in written["results"]} == cells
    assert len(written["results"]) == len(cells)
    return written


def test_sts_end_to_end_with_json_and_plot(
    minilm_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["eval", "sts", str(GRADED_PAIRS), "--model", str(minilm_path), "--layers", "6", "1", "--dims", "384", "32"]
    assert main([*arguments, "--json", str(tmp_path / "grid.json"), "--plot", str(tmp_path / "grid.png")]) == 0
    out = capsys.readouterr().out
    assert "sts cosine Spearman x100 by layers (rows) and dimensions (columns), change against 6 layers x 384" in out
    assert "(+0.0%)" in out and "encoding throughput per depth" in out
    written = _check_schema(tmp_path / "grid.json", "sts", "cosine Spearman", {(6, 384), (6, 32), (1, 384), (1, 32)})
    assert written["model"] == str(minilm_path) and written["results"][0]["score"] > 70
    assert (tmp_path / "grid.png").read_bytes().startswith(PNG_SIGNATURE)


def test_retrieval_end_to_end_on_the_default_grid(
    minilm_path: Path, graded_pairs: StsPairs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_sts_retrieval_set(tmp_path / "beir", graded_pairs, 30)
    assert main(["eval", "retrieval", str(folder), "--model", str(minilm_path), "--json", str(tmp_path / "grid.json")]) == 0
    out = capsys.readouterr().out
    for metric in ("nDCG@10", "Recall@100", "MRR@10"):
        assert f"retrieval {metric} x100 by layers (rows) and dimensions (columns)" in out
    cells = {(layers, dimensions) for layers in range(1, 7) for dimensions in (384, 256, 128, 64, 32)}
    _check_schema(tmp_path / "grid.json", "retrieval", "nDCG@10", cells)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--layers", "7"], r"num_layers must be an int in [1, 6], got 7"),
        (["--layers", "0", "2"], r"layers must be an int in [1, 6], got 0"),
        (["--dims", "500"], r"dimensions must be an int in [1, 384], got 500"),
        (["--plot", "grid.svg"], "--plot must name a .png file, got 'grid.svg'"),
        (["--json", "no/such/folder/grid.json"], "--json: folder 'no/such/folder' does not exist"),
    ],
)
def test_bad_options_exit_2_with_a_clear_error(
    minilm_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    assert main(["eval", "sts", str(GRADED_PAIRS), "--model", str(minilm_path), *arguments]) == 2
    assert message in capsys.readouterr().err


def test_bad_data_exits_2_naming_it(minilm_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "sts", str(tmp_path / "missing.tsv"), "--model", str(minilm_path)]) == 2
    assert "missing.tsv" in capsys.readouterr().err
    assert main(["eval", "retrieval", str(tmp_path), "--model", str(minilm_path)]) == 2
    assert "has no qrels/test.tsv (BEIR layout" in capsys.readouterr().err


def test_eval_needs_a_task(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval"])
    assert exit_info.value.code == 2 and "sts" in capsys.readouterr().err


def test_a_missing_extra_is_named_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "matplotlib" else real_find_spec(name))
    assert main(["eval", "sts", str(GRADED_PAIRS), "--model", "no/such/model/is/loaded", "--plot", str(tmp_path / "grid.png")]) == 2
    assert "mm2d eval sts needs matplotlib: pip install 'mm2d-integrations[eval]'" in capsys.readouterr().err
