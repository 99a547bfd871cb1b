from __future__ import annotations

from pathlib import Path

import pytest

from mm2d_integrations.cli import main


def test_embed_prints_the_cosine_similarity(minilm_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", "A man is playing a guitar.", "A man plays a guitar.", "--model", str(minilm_path), "--layers", "3", "--dims", "64"]) == 0
    out = capsys.readouterr().out
    assert "num_layers=3/6, dimensions=64/384" in out
    assert 0.5 < float(out.rsplit(":", 1)[1]) <= 1.0


def test_embed_reports_a_bad_depth(minilm_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", "a", "b", "--model", str(minilm_path), "--layers", "0"]) == 2
    assert "num_layers must be an int in [1, 6], got 0" in capsys.readouterr().err
