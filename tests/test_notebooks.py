"""The tutorial notebooks are stored executed, run top to bottom offline in this interpreter, show
today's outputs, and teach what they promise: the depth x width trade-off, choosing a cut, `mm2d eval`, `mm2d adapt`."""

from __future__ import annotations

import ast
import copy
import difflib
import re
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import nbformat
import pytest

from mm2d_integrations.samples import load_questions
from tests.notebook_runner import NAMES, NOTEBOOKS, REFRESH, execute, images, shown

ADAPTS = "langchain_rag.ipynb"  # the notebook that shows mm2d adapt
RUNS_EVAL = "llamaindex_rag.ipynb"  # the notebook that runs mm2d eval
DEPTHS, WIDTHS = (6, 5, 4, 3, 2, 1), (384, 256, 128, 64, 32)  # all-MiniLM-L6-v2's grid

# "full model         L6 x D384     0 embedded   1536 bytes/vector   hit@3 49/49 = 100%"
HIT_LINE = re.compile(r"^(\S.*?)\s+L(\d+) x D(\d+)\s+(\d+) embedded\s+(\d+) bytes/vector\s+hit@3 (\d+)/(\d+) = \d+%$", re.MULTILINE)
# "sources: ['research/dynamic_tariffs_outlook.html'] | expected: research/dynamic_tariffs_outlook.html"
SOURCES_LINE = re.compile(r"^sources: (\[.*\]) \| expected: (\S+)$", re.MULTILINE)
UNCHANGED = re.compile(r"\b0 embedded and added, 0 removed, (\d+) unchanged\b")
# "all-MiniLM-L6-v2, plain cuts: MRR@10 x100 by layers (rows) and dimensions (columns)", a header, a row per depth
GRID = re.compile(r"^(.+): MRR@10 x100 by layers \(rows\) and dimensions \(columns\)\nlayers((?: +\d+)+)\n((?: *\d+(?: +[\d.]+)+\n)+)", re.MULTILINE)
# "         10%      L6 x D64    91.3      6 of 6           256"
BUDGET_LINE = re.compile(r"^ +(\d+)% +L(\d+) x D(\d+) +([\d.]+) +\d+ of \d+ +\d+$", re.MULTILINE)
CHOSEN = re.compile(r"^cheapest cut within (\d+)%: plain L(\d+) x D(\d+), adapted L(\d+) x D(\d+)$", re.MULTILINE)
EVAL_CHECK = re.compile(r"^nDCG@10 in grid\.json: (\d+) cells, largest difference from the notebook's grid ([\d.]+)$", re.MULTILINE)
PROBE = "import sys\nprint('kernel prefix:', sys.prefix)"


@dataclass
class Executed:
    name: str
    stored: nbformat.NotebookNode
    fresh: nbformat.NotebookNode  # the stored notebook run again here, with the probe cell last
    stdout: str

    def grids(self) -> dict[str, dict[tuple[int, int], float]]:
        """Each printed MRR@10 grid by its title: (layers, dimensions) -> score."""
        grids = {}
        for title, header, rows in GRID.findall(self.stdout):
            widths = [int(width) for width in header.split()]
            cells = [[float(value) for value in row.split()] for row in rows.splitlines()]
            grids[title] = {(int(row[0]), width): score for row in cells for width, score in zip(widths, row[1:])}
        return grids


def run_notebook(name: str) -> Executed:
    stored = nbformat.read(NOTEBOOKS / name, as_version=4)
    fresh = copy.deepcopy(stored)
    for cell in fresh.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    fresh.cells.append(nbformat.v4.new_code_cell(PROBE))  # in memory only: which interpreter ran it
    execute(fresh)  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    stdout = "".join(
        output.get("text", "")
        for cell in fresh.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stdout"
    )
    return Executed(name, stored, fresh, stdout)


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest) -> Iterator[dict[str, Future[Executed]]]:
    """The notebooks this session's tests read, started together, each in its own kernel and temporary
    folder: on 2 busy cores they ran in 68 s together against 98 s one after the other."""
    wanted = [name for name in NAMES if any(getattr(item, "callspec", None) and item.callspec.params.get("executed") == name for item in request.session.items)]
    with ThreadPoolExecutor(max(1, len(wanted)), thread_name_prefix="notebook") as pool:
        yield {name: pool.submit(run_notebook, name) for name in wanted}


@pytest.fixture(scope="module", params=NAMES)
def executed(request: pytest.FixtureRequest, runs: dict[str, Future[Executed]]) -> Executed:
    return runs[request.param].result() if request.param in runs else run_notebook(request.param)


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_stored_executed(name: str) -> None:
    """Every code cell was run, in order, in one kernel, and shows something; the plots are stored as images."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    code = code_cells(notebook)
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), f"{name}: run it top to bottom with: {REFRESH}"
    empty = [cell.source.splitlines()[0] for cell in code if not cell.outputs]
    assert not empty, f"{name}: code cells without stored outputs {empty}; store them with: {REFRESH}"
    assert not [output for cell in code for output in cell.outputs if output.output_type == "error"], name
    assert images(notebook) >= (2 if name == ADAPTS else 1), name


def test_stored_outputs_are_current(executed: Executed) -> None:
    """What the stored notebook shows is what it shows when run today (memory addresses and images' bytes aside)."""
    stale = []
    for number, (stored, fresh) in enumerate(zip(code_cells(executed.stored), code_cells(executed.fresh)), 1):
        if shown(stored) != shown(fresh):
            diff = difflib.unified_diff("\n".join(shown(stored)).splitlines(), "\n".join(shown(fresh)).splitlines(), "stored", "fresh", lineterm="")
            stale.append(f"code cell {number} ({stored.source.splitlines()[0]!r}):\n" + "\n".join(diff))
    assert not stale, f"{executed.name}: stored outputs are stale; refresh them with: {REFRESH}\n\n" + "\n\n".join(stale)


def test_runs_top_to_bottom_without_error(executed: Executed) -> None:
    code = code_cells(executed.fresh)
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


def test_draws_the_depth_by_width_tradeoff(executed: Executed) -> None:
    """Every (layers, dimensions) cell scored on the sample questions, printed and drawn."""
    assert f"{len(load_questions())} questions over " in executed.stdout
    plain = executed.grids()["all-MiniLM-L6-v2, plain cuts"]
    assert set(plain) == {(layers, width) for layers in DEPTHS for width in WIDTHS}
    assert plain[6, 384] == 100.0  # uncut, every question's file ranks first
    assert max(plain[layers, 384] for layers in DEPTHS[1:]) < 90  # the packaged model is not 2D-trained: depth cuts collapse
    drawing = [cell for cell in code_cells(executed.fresh) if "draw_tradeoff(axes, plain" in cell.source]
    assert drawing and any("image/png" in output.get("data", {}) for output in drawing[0].outputs)


def test_chooses_the_cheapest_cut_within_the_loss(executed: Executed) -> None:
    """For each loss allowed: the cell with the fewest layers, then the fewest dimensions, within it, checked
    through the framework's store; and how to do the same on your data with `mm2d eval`."""
    plain = executed.grids()["all-MiniLM-L6-v2, plain cuts"]
    budgets = BUDGET_LINE.findall(executed.stdout)
    assert len(budgets) >= 3, executed.stdout
    for loss, layers, dimensions, score in budgets:
        within = [cell for cell, value in plain.items() if value >= (1 - int(loss) / 100) * plain[6, 384]]
        assert (int(layers), int(dimensions)) == min(within) and float(score) == plain[min(within)]
    chosen = re.search(r"^within (\d+)% of the full model: L(\d+) x D(\d+)$", executed.stdout, re.MULTILINE)
    assert chosen, executed.stdout
    rows = {label.strip(): tuple(map(int, numbers)) for label, *numbers in HIT_LINE.findall(executed.stdout)}
    total = len(load_questions())
    assert rows["full model"] == (6, 384, 0, 1536, total, total)  # indexed before: nothing embedded again
    layers, dimensions, _, size, hits, _ = rows[f"chosen ({chosen[1]}%)"]
    assert (layers, dimensions) == (int(chosen[2]), int(chosen[3])) and size == 4 * dimensions
    assert hits >= 0.9 * total
    markdown = "\n".join(cell.source for cell in executed.fresh.cells if cell.cell_type == "markdown")
    assert "mm2d eval retrieval" in markdown and "qrels/test.tsv" in markdown


def test_runs_mm2d_eval_on_the_sample_set(executed: Executed) -> None:
    """The command reproduces the notebook's grid from the files a user would write."""
    if executed.name != RUNS_EVAL:
        pytest.skip(f"{RUNS_EVAL} runs mm2d eval")
    check = EVAL_CHECK.search(executed.stdout)
    assert check and int(check[1]) == len(DEPTHS) * len(WIDTHS) and float(check[2]) == 0.0, executed.stdout
    assert "retrieval MRR@10 x100 by layers (rows) and dimensions (columns)" in executed.stdout


def test_adapt_makes_shallow_cuts_usable(executed: Executed) -> None:
    """`adapt` on the sample documents: full depth unchanged, every shallower cut far better, the loss
    budget bought with fewer layers, and the shallow cut finds the right files through the store."""
    if executed.name != ADAPTS:
        pytest.skip(f"{ADAPTS} shows mm2d adapt")
    grids = executed.grids()
    plain, adapted = grids["all-MiniLM-L6-v2, plain cuts"], grids["all-MiniLM-L6-v2, adapted on the sample documents"]
    assert all(adapted[6, width] == plain[6, width] for width in WIDTHS)  # full depth is bit-identical
    for layers in DEPTHS[1:]:
        assert adapted[layers, 384] >= plain[layers, 384] + 10, (layers, plain[layers, 384], adapted[layers, 384])
    chosen = CHOSEN.search(executed.stdout)
    assert chosen and int(chosen[4]) < int(chosen[2]), executed.stdout
    shallow = (int(chosen[4]), int(chosen[5]))
    rows = {label.strip(): tuple(map(int, numbers)) for label, *numbers in HIT_LINE.findall(executed.stdout)}
    assert rows["plain cut"][:2] == rows["adapted"][:2] == shallow
    assert rows["adapted"][4] >= rows["plain cut"][4] + 10
    before_after = [cell for cell in code_cells(executed.fresh) if "before and after mm2d adapt" in cell.source]
    assert before_after and any("image/png" in output.get("data", {}) for output in before_after[0].outputs)


def test_shows_the_space_mismatch_and_the_llm_prompt(executed: Executed) -> None:
    assert "EmbeddingSpaceMismatch: collection 'internal-docs-minilm-L6-D384' holds vectors of another" in executed.stdout
    # the stand-in LLM repeats its prompt: retrieved context under file names, then the question
    assert "Context:\n" in executed.stdout and "\nQuestion: " in executed.stdout
