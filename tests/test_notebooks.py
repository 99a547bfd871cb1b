"""The tutorial notebooks run top to bottom, offline, in this interpreter, and show what they promise."""

from __future__ import annotations

import ast
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from mm2d_integrations.samples import load_questions

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("langchain_rag.ipynb", "llamaindex_rag.ipynb")

# "L6 x D384          0      0.0        175          1536   hit@3 49/49 = 100%"
HIT_LINE = re.compile(r"^L(\d+) x D(\d+)\s.*\bhit@3 (\d+)/(\d+) = \d+%$", re.MULTILINE)
# "sources: ['research/dynamic_tariffs_outlook.html'] | expected: research/dynamic_tariffs_outlook.html"
SOURCES_LINE = re.compile(r"^sources: (\[.*\]) \| expected: (\S+)$", re.MULTILINE)
UNCHANGED = re.compile(r"\b0 embedded and added, 0 removed, (\d+) unchanged\b")
PROBE = "import sys\nprint('kernel prefix:', sys.prefix)"


@dataclass
class Executed:
    notebook: nbformat.NotebookNode
    stdout: str


@pytest.fixture(scope="module", params=NAMES)
def executed(request: pytest.FixtureRequest) -> Executed:
    notebook = nbformat.read(NOTEBOOKS / request.param, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE))  # in memory only: which interpreter ran it
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")  # the kernel inherits this environment
        # On a busy machine, OpenMP threads that spin while they wait for each other made torch about
        # six times slower (2 cores shared with other jobs); passive waiting avoids that.
        patch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        client = NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
        )
        client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    stdout = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stdout"
    )
    return Executed(notebook, stdout)


def test_notebooks_are_saved_clean() -> None:
    for name in NAMES:
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(notebook)
        assert notebook.metadata.kernelspec.name == "python3"
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code and all(not cell.outputs and cell.execution_count is None for cell in code), name


def test_runs_top_to_bottom_without_error(executed: Executed) -> None:
    code = [cell for cell in executed.notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    assert not [output for cell in code for output in cell.outputs if output.output_type == "error"]


def test_kernel_is_this_interpreter(executed: Executed) -> None:
    assert f"kernel prefix: {sys.prefix}\n" in executed.stdout


def test_indexes_incrementally(executed: Executed) -> None:
    """The second pass over an unchanged folder embeds nothing."""
    unchanged = [int(count) for count in UNCHANGED.findall(executed.stdout)]
    assert unchanged and all(count > 0 for count in unchanged)


def test_answers_cite_expected_sources(executed: Executed) -> None:
    lines = SOURCES_LINE.findall(executed.stdout)
    assert len(lines) >= 3, executed.stdout
    for sources, expected in lines:
        assert expected in ast.literal_eval(sources), (sources, expected)


def test_depth_and_dimensions_comparison(executed: Executed) -> None:
    rows = [tuple(map(int, row)) for row in HIT_LINE.findall(executed.stdout)]
    assert len(rows) == 3, executed.stdout
    assert len({layers for layers, *_ in rows}) >= 2 and len({dims for _, dims, *_ in rows}) >= 2
    (full_layers, full_dims, full_hits, total), *cuts = rows
    assert (full_layers, full_dims) == (6, 384)  # the packaged all-MiniLM-L6-v2, uncut
    assert total == len(load_questions())
    assert full_hits >= 0.9 * total
    for layers, dims, hits, cut_total in cuts:
        assert layers <= full_layers and dims < full_dims and cut_total == total
        assert 0.5 * total < hits <= total


def test_shows_the_space_mismatch_and_the_llm_prompt(executed: Executed) -> None:
    assert "EmbeddingSpaceMismatch: collection 'internal-docs-L6-D384' holds vectors of another" in executed.stdout
    # the stand-in LLM repeats its prompt: retrieved context under file names, then the question
    assert "Context:\n" in executed.stdout and "\nQuestion: " in executed.stdout
