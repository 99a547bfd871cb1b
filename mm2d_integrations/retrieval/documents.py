"""Read a folder of documents into text, split it into chunks with stable ids (for indexing and adapting)."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mm2d_integrations.core.validation import install_hint

__all__ = [
    "CHUNK_OVERLAP", "CHUNK_SIZE", "Chunk", "Chunking", "LoadedFolder", "SourceDocument", "TokenCounter", "chunk_id", "from_framework_documents",
    "html_to_text", "list_folder", "load_folder", "read_document", "split_documents", "warn_skipped",
]

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".md", ".markdown", ".txt", ".rst")
HTML_SUFFIXES = (".html", ".htm")
PDF_SUFFIX = ".pdf"
MAX_FILE_BYTES = 20 * 1024 * 1024
CHUNK_SIZE = 800  # characters, where no embedding model's tokenizer measures chunks
CHUNK_OVERLAP = 100
TOKEN_OVERLAP_SHARE = 8  # token chunks overlap by 1/8 of their size, as 100 of 800 characters do

Metadata = dict[str, str | int | float | bool]


@dataclass(frozen=True)
class SourceDocument:
    """The text of one document; `source` identifies it: its path relative to the indexed folder (with
    '/'), or a framework Document's metadata `source` or id. `metadata`: kept with each of its chunks."""

    source: str
    text: str
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    id: str
    text: str
    source: str
    index: int
    document_metadata: Metadata = field(default_factory=dict)

    @property
    def metadata(self) -> Metadata:
        return {**self.document_metadata, "source": self.source, "chunk": self.index}


class TokenCounter(Protocol):
    """What measures chunks in tokens: an encoder (`Matryoshka2DEncoder`)."""

    def token_count(self, texts: list[str]) -> list[int]: ...

    def document_token_budget(self) -> int: ...


@dataclass(frozen=True)
class Chunking:
    """How documents are cut: chunks of at most `size` and overlaps of `overlap`, measured by `length`
    (characters by default), split at paragraphs, then lines, then words."""

    size: int = CHUNK_SIZE
    overlap: int = CHUNK_OVERLAP
    length: Callable[[str], int] = len
    unit: str = "characters"

    @classmethod
    def by_tokens(cls, encoder: TokenCounter) -> Chunking:
        """Chunks that the encoder embeds whole: measured with its own tokenizer, at most its max_length
        tokens with the document prompt and special tokens included."""
        size = encoder.document_token_budget()
        return cls(size, size // TOKEN_OVERLAP_SHARE, lambda text: encoder.token_count([text])[0], "tokens")


@dataclass
class LoadedFolder:
    documents: list[SourceDocument] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) for every file that was not read."""


def html_to_text(html: str) -> str:
    """The title and visible text of an HTML page, one block a line (html-text: scripts, styles and
    comments dropped, blocks on lines of their own; templates and noscript fallbacks dropped too)."""
    try:
        import html_text
    except ImportError as error:  # an optional dependency: only HTML files need it
        raise ImportError(install_hint("html_text", "rag")) from error

    tree = html_text.parse_html(html)
    for hidden in tree.xpath("//template | //noscript"):
        hidden.drop_tree()  # its tail, the text after it, stays
    lines = (" ".join(line.split()) for line in html_text.extract_text(tree).splitlines())
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


def list_folder(folder: str | Path) -> tuple[Path, list[tuple[str, str | None]]]:
    """The resolved folder, and its files in order (paths relative to it, with '/'), each with the reason
    it must not be read, or None for a file to read (`read_document`)."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"document folder {str(folder)!r} does not exist or is not a folder")
    pdf_ok = importlib.util.find_spec("pypdf") is not None
    listed: list[tuple[str, str | None]] = []
    for path, reason in _files(root):
        suffix = path.suffix.lower()
        if reason is None and suffix not in (*TEXT_SUFFIXES, *HTML_SUFFIXES, PDF_SUFFIX):
            reason = f"unsupported file type {suffix or '(none)'}"
        elif reason is None and suffix == PDF_SUFFIX and not pdf_ok:
            reason = "PDF, and pypdf is not installed (pip install 'mm2d-integrations[pdf]')"
        listed.append((path.relative_to(root).as_posix(), reason))
    return root, listed


def read_document(root: Path, relative: str, max_file_bytes: int = MAX_FILE_BYTES) -> SourceDocument | str:
    """The document at `relative` (as `list_folder` gives it) under `root`, or why it cannot be read."""
    path = root / relative
    reason, text = _read(path, path.suffix.lower(), max_file_bytes)
    return SourceDocument(relative, text) if reason is None else reason


def warn_skipped(root: Path, skipped: list[tuple[str, str]]) -> None:
    if skipped:
        logger.warning("skipped %d file(s) in %s:\n%s", len(skipped), root, "\n".join(f"  {path}: {why}" for path, why in skipped))


def load_folder(folder: str | Path, *, max_file_bytes: int = MAX_FILE_BYTES) -> LoadedFolder:
    """The readable documents of `folder`; everything else is listed in `skipped` with a warning."""
    root, listed = list_folder(folder)
    loaded = LoadedFolder()
    for relative, reason in listed:
        read = read_document(root, relative, max_file_bytes) if reason is None else reason
        if isinstance(read, SourceDocument):
            loaded.documents.append(read)
        else:
            loaded.skipped.append((relative, read))
    warn_skipped(root, loaded.skipped)
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


def split_documents(documents: list[SourceDocument], chunking: Chunking | None = None) -> list[Chunk]:
    """The documents' chunks as `chunking` cuts them (default: 800 characters, 100 overlapping)."""
    try:
        from langchain_text_splitters import RecursiveCharacterTextSplitter
    except ImportError as error:  # an optional dependency: only splitting needs it
        raise ImportError(install_hint("langchain_text_splitters", "rag")) from error

    chunking = chunking or Chunking()
    splitter = RecursiveCharacterTextSplitter(chunk_size=chunking.size, chunk_overlap=chunking.overlap, length_function=chunking.length)
    return [
        Chunk(chunk_id(document.source, index, text), text, document.source, index, document.metadata)
        for document in documents
        for index, text in enumerate(splitter.split_text(document.text))
    ]


def from_framework_documents(documents: Iterable[Any]) -> list[SourceDocument]:
    """LangChain (`langchain_core.documents.Document`) or LlamaIndex (`llama_index.core.Document`)
    documents as ours, so that any of their loaders (docx, pptx, web) feeds the indexer.

    A document's source is its metadata `source`, else `file_path` (LlamaIndex's readers), else its id; its scalar metadata is kept with each
    chunk (Chroma stores no lists or dicts). Two documents with one source are a ValueError, as their
    chunks' ids would collide.
    """
    converted: dict[str, SourceDocument] = {}
    for position, document in enumerate(documents):
        text = getattr(document, "page_content", None)
        if text is None and callable(getattr(document, "get_content", None)):
            text = document.get_content()
        if not isinstance(text, str):
            raise TypeError(f"documents[{position}] is a {type(document).__name__}, not a LangChain or LlamaIndex Document")
        metadata = dict(getattr(document, "metadata", None) or {})
        source = metadata.get("source") or metadata.get("file_path") or getattr(document, "id", None) or getattr(document, "id_", None)
        if not source:
            raise ValueError(f"documents[{position}] has neither metadata['source'] nor an id: give it one, so that re-indexing finds it again")
        source = str(source)
        if source in converted:
            raise ValueError(f"documents[{position}] has the source {source!r} of an earlier document; sources must be unique")
        kept = {key: value for key, value in metadata.items() if isinstance(value, (str, int, float, bool)) and key not in ("source", "chunk")}
        converted[source] = SourceDocument(source, text, kept)
    return list(converted.values())
