"""The package's shape: imports run one way, the core needs no framework, every public module says
what it exports, and optional dependencies fail with an install hint rather than a bare ImportError."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mm2d_integrations"
FRAMEWORKS = ("langchain_core", "langchain_chroma", "langchain_text_splitters", "llama_index", "chromadb", "pydantic", "ray")
CORE = (
    "mm2d_integrations.encoder", "mm2d_integrations.loading", "mm2d_integrations.options", "mm2d_integrations.runtime",
    "mm2d_integrations.source", "mm2d_integrations.settings", "mm2d_integrations.pooling", "mm2d_integrations.exit_heads",
    "mm2d_integrations.validation", "mm2d_integrations.funnel", "mm2d_integrations.store", "mm2d_integrations.adapt",
    "mm2d_integrations.documents", "mm2d_integrations.compat", "mm2d_integrations.remote", "mm2d_integrations.vector_rows",
)


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


def test_nothing_below_the_command_line_imports_it() -> None:
    upward = {
        (name, target)
        for name, targets in import_graph().items()
        for target in targets
        if target.startswith("mm2d_integrations.cli") and not name.startswith("mm2d_integrations.cli")
    }
    assert upward == set()


def test_the_core_imports_no_framework_and_no_sample_app() -> None:
    """At module level: an optional dependency may be imported where it is used, with an install hint."""
    graph = import_graph()
    for name in CORE:
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        frameworks = [module for module in _imports(path, module_level=True) if module.split(".")[0] in FRAMEWORKS]
        upward = [module for module in graph[name] if module.startswith(("mm2d_integrations.rag", "mm2d_integrations.evaluation", "mm2d_integrations.chroma", "mm2d_integrations.langchain", "mm2d_integrations.llama_index"))]
        assert (name, frameworks, upward) == (name, [], [])


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
