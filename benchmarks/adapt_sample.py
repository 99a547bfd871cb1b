"""How long `adapt` takes on the sample documents, as langchain_rag.ipynb calls it: the packaged
all-MiniLM-L6-v2, the 126 chunks `mm2d index` makes of the sample documents, the default settings
(every depth below full; ridge, low-rank and MLP heads tried at each, an exit layer too at the middle depth). Beside it, in the same run,
one full-depth encoding of the same chunks (what indexing them costs), as the baseline of a ratio.

Each is timed --repeats times (default 3), alternated; best wall-clock and best CPU seconds of this
process are printed (the machine may be shared: read the best, and the ratio).

Usage: OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python benchmarks/adapt_sample.py [--repeats N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.samples import SAMPLE_DOCS
from mm2d_integrations.training.adapt import adapt, read_corpus


def _time(function: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    model, texts = default_model(), read_corpus(SAMPLE_DOCS)
    encoder = Matryoshka2DEncoder(model)
    print(f"{len(texts)} chunks of the sample documents; torch threads: {torch.get_num_threads()}; best of {repeats}")
    timings: dict[str, list[tuple[float, float]]] = {"adapt": [], "encode": []}
    with tempfile.TemporaryDirectory() as work:
        for round_number in range(repeats):
            timings["encode"].append(_time(partial(encoder.encode_documents, texts)))
            # adapt loads the model itself, as the notebook's call does
            timings["adapt"].append(_time(partial(adapt, model, texts, Path(work) / f"adapted-{round_number}")))
    best = {name: (min(wall for wall, _ in runs), min(cpu for _, cpu in runs)) for name, runs in timings.items()}
    for name, label in (("encode", "encode the chunks at full depth"), ("adapt", "adapt(model, chunks, out)")):
        wall, cpu = best[name]
        print(f"{label:34} wall {wall:6.1f} s   CPU {cpu:6.1f} s")
    print(f"{'ratio adapt / encode':34} wall {best['adapt'][0] / best['encode'][0]:6.1f}     CPU {best['adapt'][1] / best['encode'][1]:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
