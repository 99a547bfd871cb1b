"""The package's shape: imports run one way, the core needs no framework, every public module says
what it exports, and optional dependencies fail with an install hint rather than a bare ImportError."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mm2d_integrations"
FRAMEWORKS = ("langchain_core", "langchain_chroma", "langchain_text_splitters", "llama_index", "chromadb", "ray")
# The folders (and the top-level adapter modules) from the bottom up: a module imports from its own tier
# or a lower one, never from a higher one. A new folder or top-level module must be placed here.
TIERS: tuple[tuple[str, ...], ...] = (
    ("samples", "core"),  # the model: no framework
    ("retrieval", "serving"),  # documents -> chunks, store rules, funnel, rows; the server, remote encoder, export
    ("frameworks",),  # what the adapters share
    ("__init__", "langchain", "llama_index", "chroma", "ray"),  # the public adapters, one module per framework
    ("training", "evaluation"),  # applications of the encoder
    ("rag",),  # the sample RAG app: index a folder, answer questions
    ("cli",),  # `mm2d`
)
NO_FRAMEWORK = ("samples", "core")  # not even lazily
NO_FRAMEWORK_AT_IMPORT = ("retrieval",)  # may use one where it is needed (the text splitter), with an install hint

def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, module_level: bool = False) -> list[str]:
    """Every module an import statement of `path` names: at any depth (function bodies and
    TYPE_CHECKING blocks too: a cycle through a lazy import is still a cycle), or at module level only."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in tree.body if module_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]  # `from package import module`
    return names


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {target for target in _imports(path) if target in modules and target != name} for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    assert _cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def place(module: str) -> str:
    """The folder a module lives in, or the top-level module's own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def tier(module: str) -> int:
    return next(index for index, places in enumerate(TIERS) if place(module) in places)


def test_every_folder_and_top_level_module_has_a_tier() -> None:
    placed = {name for places in TIERS for name in places}
    assert {place(name) for name in import_graph()} - placed == set()


def test_imports_never_climb_to_a_higher_tier() -> None:
    upward = sorted((name, target) for name, targets in import_graph().items() for target in targets if tier(target) > tier(name))
    assert upward == []


def test_the_tier_check_finds_a_climb() -> None:
    assert tier("mm2d_integrations.core.encoder") < tier("mm2d_integrations.langchain") < tier("mm2d_integrations.cli.rag")


def test_the_model_and_retrieval_folders_import_no_framework() -> None:
    """The model's folders run without any framework installed; retrieval imports none when imported."""
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if place(name) in NO_FRAMEWORK + NO_FRAMEWORK_AT_IMPORT:
            imported = _imports(path, module_level=place(name) in NO_FRAMEWORK_AT_IMPORT)
            assert (name, [module for module in imported if module.split(".")[0] in FRAMEWORKS]) == (name, [])


def test_importing_the_package_loads_no_framework() -> None:
    script = (
        "import sys, mm2d_integrations, mm2d_integrations.cli; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: _module_name(path))
def test_public_modules_declare_all_and_no_import_workarounds(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "noqa: E402" not in text and "require(" not in text
    if path.name != "__main__.py":
        assert "__all__" in text, f"{path} has no __all__"


def test_ruff_passes() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed (it comes with the dev extra)")
    result = subprocess.run([str(ruff), "check", str(PACKAGE.parent)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes() -> None:
    """The package type-checks under pyproject.toml's [tool.mypy]: the public modules with the strict flags."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (it comes with the dev extra)")
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
