"""Hostile and careless input (docs/reliability.md): folders holding things that are not files, and
limits that follow the model. Readers run in subprocesses with a timeout, so that a reader that blocks
fails the test instead of hanging it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mm2d_integrations.retrieval.documents import read_document
from tests.test_langchain import MINILM

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))


def _device(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root makes device files")
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's device


def _link_loop(path: Path) -> None:
    path.symlink_to(path.with_name("y.txt"))
    path.with_name("y.txt").symlink_to(path)


def _locked_folder(path: Path) -> None:
    path.mkdir()
    (path / "c.txt").write_text("Behind a folder nobody may list.", encoding="utf-8")
    path.chmod(0)


LOOP = "symbolic link loop (not followed)"
# name -> (what makes it, the reason it is listed with, the error when it is given as the corpus itself)
HOSTILE: dict[str, tuple[Any, dict[str, str], str]] = {
    "fifo.txt": (_fifo, {"fifo.txt": "not a regular file (FIFO)"}, "is a FIFO, not a folder of documents or a file of texts"),
    "sock.txt": (_socket, {"sock.txt": "not a regular file (socket)"}, "is a socket, not a folder of documents or a file of texts"),
    "null.txt": (_device, {"null.txt": "not a regular file (character device)"}, "is a character device, not a folder"),
    "x.txt": (_link_loop, {"x.txt": LOOP, "y.txt": LOOP}, "x.txt' does not exist"),
    "locked": (_locked_folder, {"locked": "unreadable folder (PermissionError: Permission denied)"}, "locked' cannot be read (Permission denied)"),
}


def hostile_folder(base: Path, names: Iterable[str]) -> dict[str, str]:
    """Fill `base` with two readable documents and the `HOSTILE` entries `names`; return what each
    entry is listed as skipped with."""
    (base / "sub").mkdir()
    (base / "a.txt").write_text("A readable note about turbines.", encoding="utf-8")
    (base / "sub" / "b.md").write_text("Another readable note about batteries.", encoding="utf-8")
    expected: dict[str, str] = {}
    for name in names:
        make, skipped, _as_corpus = HOSTILE[name]
        make(base / name)
        expected.update(skipped)
    return expected


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder that an unprivileged user can reach (pytest's own are private to their owner) and
    short enough a path for a Unix socket."""
    base = Path(tempfile.mkdtemp(prefix="mm2d-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        if (base / "locked").exists():
            (base / "locked").chmod(0o700)
        shutil.rmtree(base)


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter with this checkout's package, stopped after TIMEOUT_S."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return run_python("import sys; from mm2d_integrations.cli import main; sys.exit(main(sys.argv[1:]))", *argv)


READERS = """
import json, os, sys
from pathlib import Path
import langchain_text_splitters  # imported before the process gives up root, which owns the interpreter's folder
from mm2d_integrations.retrieval.documents import load_folder
from mm2d_integrations.training.adapt import read_corpus

if os.geteuid() == 0:  # as nobody, so that folder modes apply (root reads every folder)
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)

def error(call):
    try:
        call()
    except Exception as raised:
        return f"{type(raised).__name__}: {raised}"

folder, entry = Path(sys.argv[1]), sys.argv[2]
loaded = load_folder(folder)
print(json.dumps({
    "documents": sorted(document.source for document in loaded.documents),
    "skipped": dict(loaded.skipped),
    "corpus": read_corpus(folder),
    "entry as corpus": error(lambda: read_corpus(folder / entry)),
}))
"""


@pytest.mark.parametrize("entry", HOSTILE)
def test_the_folder_readers_read_regular_files_only_and_list_the_rest(folder: Path, entry: str) -> None:
    """`load_folder` (`mm2d index`) and `read_corpus` (`mm2d adapt --corpus`): a FIFO, a socket or a
    device is never opened, link loops and folders that cannot be listed are skipped, the rest is read."""
    expected = hostile_folder(folder, [entry])
    done = run_python(READERS, str(folder), entry)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert (got["documents"], got["skipped"]) == (["a.txt", "sub/b.md"], expected)
    assert got["corpus"] == ["A readable note about turbines.", "Another readable note about batteries."]
    assert all(f"  {path}: {why}" in done.stderr for path, why in expected.items())  # the warning lists them
    assert HOSTILE[entry][2] in got["entry as corpus"]


def test_a_file_that_became_a_device_after_listing_is_not_read() -> None:
    """The reader checks what it opens again (a file replaced by a FIFO or a device since it was listed)."""
    assert read_document(Path("/dev"), "null") == "not a regular file (character device)"


def test_mm2d_index_skips_what_is_not_a_regular_file_and_indexes_the_rest(folder: Path, tmp_path: Path) -> None:
    """The table's rows as the command line meets them: a FIFO once hung it, a link loop was a traceback."""
    entries = ["fifo.txt", "sock.txt", "x.txt", *(["null.txt"] if os.geteuid() == 0 else [])]
    expected = hostile_folder(folder, entries)
    done = run_cli("index", str(folder), "--persist-dir", str(tmp_path / "chroma"), "--model", MINILM)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("2 files, 2 chunks: 2 embedded and added")
    assert all(f"skipped {path}: {why}" in done.stdout for path, why in expected.items()), done.stdout


def cli_error(done: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    """Exit status and the one line of stderr (a traceback would be several)."""
    assert done.stderr.count("\n") == 1, done.stderr
    return done.returncode, done.stderr.strip()


def model_copy(model: Path | str, folder: Path, **config_changes: Any) -> Path:
    """`model` as a folder of links to its files, with `config_changes` applied to its JSON files:
    {"config.json": {"hidden_size": 0}} and the like."""
    folder.mkdir()
    for path in Path(model).iterdir():
        (folder / path.name).symlink_to(path, target_is_directory=path.is_dir())
    for name, changes in config_changes.items():
        file = folder / name.replace("__", "/")
        content = json.loads(file.read_text()) if file.exists() else {}
        file.unlink(missing_ok=True)
        file.write_text(json.dumps({**content, **changes}))
    return folder
