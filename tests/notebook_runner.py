"""Run the tutorial notebooks as CI does and compare what they show: used by tests/test_notebooks.py
(fresh outputs against the stored ones) and by scripts/execute_notebooks.py (which stores them)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from nbclient import NotebookClient
from nbformat import NotebookNode

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("langchain_rag.ipynb", "llamaindex_rag.ipynb")
REFRESH = "PYTHONPATH=$PWD .venv/bin/python scripts/execute_notebooks.py"
VARIES = "varies"  # a cell tagged so shows output that differs from run to run; only its kinds of output are compared
ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")


def execute(notebook: NotebookNode) -> NotebookNode:
    """Run every cell in place, top to bottom, in a python3 kernel of this interpreter, from notebooks/,
    offline; a failing cell raises CellExecutionError with its traceback."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        # On a busy machine, OpenMP threads that spin while they wait for each other made torch about
        # six times slower (2 cores shared with other jobs); passive waiting avoids that.
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", record_timing=False, coalesce_streams=True,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    return client.execute(env=env)


def shown(cell: NotebookNode) -> list[str]:
    """What a code cell showed: its stdout and its results as text (memory addresses masked), its images as
    their type alone (their bytes vary with the matplotlib version); stderr (warnings) left out. For a cell
    tagged `varies`, only the kinds of output."""
    varies = VARIES in cell.metadata.get("tags", [])
    texts: list[str] = []
    stdout = "".join(output.text for output in cell.outputs if output.output_type == "stream" and output.name == "stdout")
    if stdout:
        texts.append("stdout" if varies else "stdout: " + ADDRESS.sub("0x...", stdout))
    for output in cell.outputs:
        if output.output_type == "error":
            texts.append(f"error: {output.ename}: {output.evalue}")
        elif output.output_type in ("execute_result", "display_data"):
            for kind, data in sorted(output.data.items()):
                plain = kind.startswith("text/") and not varies
                texts.append(f"{kind}: {ADDRESS.sub('0x...', data)}" if plain else kind)
    return texts


def images(notebook: NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)
