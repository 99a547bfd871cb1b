"""Read a folder of documents into text, split it into chunks with stable ids (for indexing and adapting)."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from mm2d_integrations.validation import install_hint

__all__ = ["CHUNK_OVERLAP", "CHUNK_SIZE", "Chunk", "LoadedFolder", "SourceDocument", "chunk_id", "html_to_text", "load_folder", "split_documents"]

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".md", ".markdown", ".txt", ".rst")
HTML_SUFFIXES = (".html", ".htm")
PDF_SUFFIX = ".pdf"
MAX_FILE_BYTES = 20 * 1024 * 1024
CHUNK_SIZE = 800
CHUNK_OVERLAP = 100


@dataclass(frozen=True)
class SourceDocument:
    """The text of one file; `source` is its path relative to the indexed folder, with '/'."""

    source: str
    text: str


@dataclass(frozen=True)
class Chunk:
    id: str
    text: str
    source: str
    index: int

    @property
    def metadata(self) -> dict[str, str | int]:
        return {"source": self.source, "chunk": self.index}


@dataclass
class LoadedFolder:
    documents: list[SourceDocument] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) for every file that was not read."""


class _VisibleText(HTMLParser):
    """The title and visible text of an HTML page, one block per line."""

    _HIDDEN = {"script", "style", "template", "noscript"}
    _BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "title", "section", "article", "table", "ul", "ol"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden_depth += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden_depth = max(0, self._hidden_depth - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")
        elif tag in {"td", "th"}:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def _pdf_to_text(path: Path) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() or "" for page in PdfReader(path).pages)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise UnicodeDecodeError("utf-8", data[:1], 0, 1, "binary content (NUL bytes)")
    return data.decode("utf-8")


def _files(root: Path) -> Iterator[tuple[Path, str | None]]:
    """Every file under `root` (sorted), with a reason to skip it when it must not be read."""
    for directory, subdirectories, names in os.walk(root):
        subdirectories.sort()
        for name in [*subdirectories]:
            if (Path(directory) / name).is_symlink():
                subdirectories.remove(name)
                yield Path(directory) / name, "symbolic link to a folder (not followed)"
        for name in sorted(names):
            path = Path(directory) / name
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                yield path, "symbolic link out of the indexed folder (not followed)"
            else:
                yield path, None


def load_folder(folder: str | Path, *, max_file_bytes: int = MAX_FILE_BYTES) -> LoadedFolder:
    """The readable documents of `folder`; everything else is listed in `skipped` with a warning."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"document folder {str(folder)!r} does not exist or is not a folder")
    pdf_ok = importlib.util.find_spec("pypdf") is not None
    loaded = LoadedFolder()
    for path, reason in _files(root):
        relative = path.relative_to(root).as_posix()
        suffix = path.suffix.lower()
        if reason is None and suffix not in (*TEXT_SUFFIXES, *HTML_SUFFIXES, PDF_SUFFIX):
            reason = f"unsupported file type {suffix or '(none)'}"
        elif reason is None and suffix == PDF_SUFFIX and not pdf_ok:
            reason = "PDF, and pypdf is not installed (pip install 'mm2d-integrations[pdf]')"
        if reason is None:
            reason, text = _read(path, suffix, max_file_bytes)
            if reason is None:
                loaded.documents.append(SourceDocument(relative, text))
                continue
        loaded.skipped.append((relative, reason))
    if loaded.skipped:
        logger.warning(
            "skipped %d file(s) in %s:\n%s", len(loaded.skipped), root,
            "\n".join(f"  {path}: {why}" for path, why in loaded.skipped),
        )
    return loaded


def _read(path: Path, suffix: str, max_file_bytes: int) -> tuple[str | None, str]:
    """(None, text) for a readable file, else (why not, "")."""
    try:
        size = path.stat().st_size
        if size > max_file_bytes:
            return f"larger than {max_file_bytes} bytes ({size})", ""
        if suffix == PDF_SUFFIX:
            return None, _pdf_to_text(path)
        text = _read_text(path)
        return None, html_to_text(text) if suffix in HTML_SUFFIXES else text
    except UnicodeDecodeError:
        return "binary or not UTF-8 text", ""
    except Exception as error:  # an unreadable file must not stop the others
        return f"unreadable ({type(error).__name__}: {error})", ""


def chunk_id(source: str, index: int, text: str) -> str:
    """Stable across runs: the same text at the same place in the same file gets the same id."""
    return f"{source}#{index}#{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}"


def split_documents(
    documents: list[SourceDocument], *, chunk_size: int = CHUNK_SIZE, chunk_overlap: int = CHUNK_OVERLAP
) -> list[Chunk]:
    """Chunks of about `chunk_size` characters, split at paragraphs, then lines, then words."""
    try:
        from langchain_text_splitters import RecursiveCharacterTextSplitter
    except ImportError as error:  # an optional dependency: only splitting needs it
        raise ImportError(install_hint("langchain_text_splitters", "rag")) from error

    splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    return [
        Chunk(chunk_id(document.source, index, text), text, document.source, index)
        for document in documents
        for index, text in enumerate(splitter.split_text(document.text))
    ]
