"""New output folders (`mm2d adapt`, `mm2d export`): refused when they already hold something,
written aside and moved in whole, so that an interrupted run leaves nothing half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["INTERRUPTED", "check_new_folder", "staged_folder"]

# Set by the command line's Ctrl-C handler. Python raises the KeyboardInterrupt wherever the signal
# lands, and one raised inside a finalizer or a library's broad except is dropped: a staged folder
# then still must not be moved in.
INTERRUPTED = threading.Event()


def check_new_folder(out: str | Path) -> Path:
    """`out` as a Path, or an error when it exists and is not an empty folder, or its parent is missing."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"out {str(out)!r} exists and is not an empty folder; give a new folder")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"out: folder {str(out.parent)!r} does not exist")
    return out


@contextlib.contextmanager
def staged_folder(out: Path, tag: str) -> Iterator[Path]:
    """A staging folder beside `out`, renamed to `out` when the block succeeds and removed in any case."""
    staging = out.parent / f".{out.name}.{tag}-{os.getpid()}"
    staging.mkdir()
    try:
        yield staging
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
