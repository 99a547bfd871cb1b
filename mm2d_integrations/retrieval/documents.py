"""Read a folder of documents into text, split it into chunks with stable ids (for indexing and adapting)."""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import io
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mm2d_integrations.core.validation import install_hint

__all__ = [
    "CHUNK_OVERLAP", "CHUNK_SIZE", "SOURCE_KEYS", "Chunk", "Chunking", "LoadedFolder", "SourceDocument", "TokenCounter", "chunk_id",
    "document_source", "file_kind", "from_framework_documents", "html_to_text", "list_folder", "load_folder", "read_document",
    "split_documents", "warn_skipped",
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

SOURCE_KEYS = ("source", "file_path", "file_name", "url")
"""The metadata keys that name where a document came from, in the order they are tried: LangChain's
loaders write `source`, LlamaIndex's readers `file_path` and `file_name`, web and API loaders `url`."""


def document_source(metadata: Mapping[str, Any] | None, document_id: str | None = None) -> str | None:
    """Where a document came from: the first of `SOURCE_KEYS` its metadata holds, else its id; None when it has neither."""
    found = next((metadata[key] for key in SOURCE_KEYS if metadata and metadata.get(key)), None) or document_id
    return str(found) if found else None


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

    def __post_init__(self) -> None:
        whole = all(isinstance(value, int) and not isinstance(value, bool) for value in (self.size, self.overlap))
        if not (whole and self.size >= 1 and 0 <= self.overlap < self.size):
            raise ValueError(f"chunk size must be an int >= 1 and overlap an int in [0, size), got size={self.size!r}, overlap={self.overlap!r}")

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
    """(path, reason) for every file that was not read, and every folder that could not be listed."""


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


def _pdf_to_text(data: bytes) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages)


def _decode_text(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise UnicodeDecodeError("utf-8", data[:1], 0, 1, "binary content (NUL bytes)")
    return data.decode("utf-8")


_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"))


def file_kind(mode: int) -> str:
    """What a file of `mode` (an `os.stat` result's `st_mode`) is: "regular file", "FIFO", "socket", ..."""
    return next((kind for test, kind in _KINDS if test(mode)), "regular file" if stat.S_ISREG(mode) else "special file")


def _not_regular(mode: int) -> str | None:
    """Why a file of `mode` must not be opened: anything but a regular file (a FIFO would block the
    reader forever, a device may never end)."""
    return None if stat.S_ISREG(mode) else f"not a regular file ({file_kind(mode)})"


def _unreadable(error: Exception) -> str:
    return f"unreadable ({type(error).__name__}: {error})"


def _skip_reason(root: Path, path: Path) -> str | None:
    """Why the entry `path` under `root` must not be read, without opening it; None for a regular file
    (or a link to one inside the folder)."""
    if path.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(root):
        return "symbolic link out of the indexed folder (not followed)"
    try:
        return _not_regular(os.stat(path).st_mode)
    except OSError as error:
        return "symbolic link loop (not followed)" if error.errno == errno.ELOOP else _unreadable(error)


def _files(root: Path) -> Iterator[tuple[Path, str | None]]:
    """Every entry under `root` (sorted), with a reason to skip it when it must not be read; a folder
    that cannot be listed is one such entry, and the walk goes on."""
    unlisted: list[OSError] = []

    def folders_not_listed() -> Iterator[tuple[Path, str]]:
        while unlisted:
            error = unlisted.pop(0)
            yield Path(error.filename), f"unreadable folder ({type(error).__name__}: {error.strerror})"

    for directory, subdirectories, names in os.walk(root, onerror=unlisted.append):
        yield from folders_not_listed()
        subdirectories.sort()
        for name in [*subdirectories]:
            if (Path(directory) / name).is_symlink():
                subdirectories.remove(name)
                yield Path(directory) / name, "symbolic link to a folder (not followed)"
        for name in sorted(names):
            path = Path(directory) / name
            yield path, _skip_reason(root, path)
    yield from folders_not_listed()


def list_folder(folder: str | Path) -> tuple[Path, list[tuple[str, str | None]]]:
    """The resolved folder, and its files in order (paths relative to it, with '/'), each with the reason
    it must not be read, or None for a file to read (`read_document`)."""
    root = Path(folder).resolve()
    if root.is_file():
        raise FileNotFoundError(f"document folder {str(folder)!r} is a file, not a folder: give the folder that holds it")
    if not root.is_dir():
        raise FileNotFoundError(f"document folder {str(folder)!r} does not exist")
    try:
        os.scandir(root).close()
    except OSError as error:
        raise ValueError(f"document folder {str(folder)!r} cannot be read ({error.strerror})") from None
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


def _file_bytes(path: Path, max_file_bytes: int) -> bytes | str:
    """The bytes of the regular file at `path`, or why they are not read. What is not a regular file is
    never opened; a file replaced by one since it was listed is opened without blocking, seen and left."""
    reason = _not_regular(os.stat(path).st_mode)
    if reason is not None:
        return reason
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as file:
        status = os.fstat(file.fileno())
        reason = _not_regular(status.st_mode)
        data = b"" if reason or status.st_size > max_file_bytes else file.read(max_file_bytes + 1)
    size = max(status.st_size, len(data))  # a file may grow while it is read
    if reason is None and size > max_file_bytes:
        reason = f"larger than {max_file_bytes} bytes ({size})"
    return reason or data


def _read(path: Path, suffix: str, max_file_bytes: int) -> tuple[str | None, str]:
    """(None, text) for a readable file, else (why not, "")."""
    try:
        data = _file_bytes(path, max_file_bytes)
        if isinstance(data, str):
            return data, ""
        if suffix == PDF_SUFFIX:
            return None, _pdf_to_text(data)
        text = _decode_text(data)
        return None, html_to_text(text) if suffix in HTML_SUFFIXES else text
    except UnicodeDecodeError:
        return "binary or not UTF-8 text", ""
    except Exception as error:  # an unreadable file must not stop the others
        return _unreadable(error), ""


def chunk_id(source: str, index: int, text: str) -> str:
    """Stable across runs: the same text at the same place in the same file gets the same id (a lone
    surrogate, which a Python str may hold, is hashed as its code point rather than refused)."""
    return f"{source}#{index}#{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


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
        for index, text in enumerate(piece for piece in splitter.split_text(document.text) if piece.strip())  # whitespace says nothing
    ]


def from_framework_documents(documents: Iterable[Any]) -> list[SourceDocument]:
    """LangChain (`langchain_core.documents.Document`) or LlamaIndex (`llama_index.core.Document`)
    documents as ours, so that any of their loaders (docx, pptx, web) feeds the indexer.

    A document's source is the first of its metadata's `SOURCE_KEYS`, else its id (`document_source`); its scalar metadata is kept with each
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
        source = document_source(metadata, getattr(document, "id", None) or getattr(document, "id_", None))
        if source is None:
            raise ValueError(
                f"documents[{position}] has no metadata {', '.join(SOURCE_KEYS)} and no id: give it one, so that re-indexing finds it again"
            )
        if source in converted:
            raise ValueError(f"documents[{position}] has the source {source!r} of an earlier document; sources must be unique")
        kept = {key: value for key, value in metadata.items() if isinstance(value, (str, int, float, bool)) and key not in ("source", "chunk")}
        converted[source] = SourceDocument(source, text, kept)
    return list(converted.values())
