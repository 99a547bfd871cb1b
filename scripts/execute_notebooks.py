"""Run the tutorial notebooks top to bottom and store them with their outputs, which CI compares a fresh
run against (tests/test_notebooks.py). Run it after a change that alters what a notebook shows.

Usage, from the repository root: PYTHONPATH=$PWD .venv/bin/python scripts/execute_notebooks.py [NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.notebook_runner import NAMES, NOTEBOOKS, execute


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"default: all of {', '.join(NAMES)}")
    names = parser.parse_args().names or NAMES
    unknown = [name for name in names if name not in NAMES]
    if unknown:
        parser.error(f"no notebook {unknown[0]!r}; the notebooks: {', '.join(NAMES)}")
    for name in names:
        path = NOTEBOOKS / name
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        started = time.perf_counter()
        execute(notebook)
        nbformat.validate(notebook)
        nbformat.write(notebook, path)
        print(f"{path}: executed in {time.perf_counter() - started:.0f} s, outputs stored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
