"""Where a kept library does what hand-written code did (retries, padding, the cache folder, HTML text),
the outputs stay as they were: each test pins what the hand-written code gave."""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from pathlib import Path

import chromadb
import numpy as np
import pytest
from transformers import AutoTokenizer

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.core.onnx import cache_dir
from mm2d_integrations.rag import indexer
from mm2d_integrations.retrieval.documents import html_to_text, load_folder, split_documents
from mm2d_integrations.retrieval.store_rules import StoreUnavailable
from mm2d_integrations.samples import SAMPLE_DOCS
from tests.test_chroma import ChromaServer
from tests.tiny_models import build_tiny_model

REAL_SLEEP = time.sleep

# --- retries: a write that loses the Chroma server -------------------------------------------------


@pytest.fixture
def lost_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real server, its collection, and the waits between tries (recorded, not slept: the test
    does not take the 15.5 s of backoff); the server is stopped before each test writes."""
    server = ChromaServer(tmp_path / "server")
    server.start()
    collection = chromadb.HttpClient(host="127.0.0.1", port=server.port).create_collection("lost")
    server.stop()
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    yield server, collection, waits
    monkeypatch.undo()
    server.stop()


def _write(collection, ids: list[str]) -> None:
    indexer.write_chunks(collection, ids, [f"text {chunk}" for chunk in ids], [{"n": 1} for _ in ids], np.eye(len(ids), 4, dtype=np.float32))


def test_a_server_that_stays_away_is_tried_six_times_with_doubling_waits(lost_server) -> None:
    _, collection, waits = lost_server
    with pytest.raises(StoreUnavailable, match=r"stopped answering while writing chunks \(.*; 6 tries over 15\.5 s\); what was written is kept"):
        _write(collection, ["a"])
    assert waits == [0.5, 1, 2, 4, 8]


def test_a_server_back_during_the_waits_gets_the_write(lost_server, monkeypatch: pytest.MonkeyPatch) -> None:
    server, collection, waits = lost_server

    def wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:  # the server restarts during the second wait
            with monkeypatch.context() as restarting:
                restarting.setattr(time, "sleep", REAL_SLEEP)
                server.start()

    monkeypatch.setattr(time, "sleep", wait)
    _write(collection, ["a", "b"])
    assert waits == [0.5, 1]
    assert sorted(chromadb.HttpClient(host="127.0.0.1", port=server.port).get_collection("lost").get()["ids"]) == ["a", "b"]


def test_the_retry_settings_are_read_when_writing(lost_server, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/test_ray.py shortens them for a run on a cluster; so may a user."""
    _, collection, waits = lost_server
    monkeypatch.setattr(indexer, "WRITE_TRIES", 3)
    monkeypatch.setattr(indexer, "WRITE_BACKOFF_S", 0.2)
    with pytest.raises(StoreUnavailable, match=r"3 tries over 0\.6 s"):
        _write(collection, ["a"])
    assert waits == pytest.approx([0.2, 0.4])


# --- padding: the tokenizer's own ---------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["lasttoken", "mean", "max", "cls"])
def test_texts_padded_in_a_batch_embed_as_each_alone(tmp_path: Path, minilm_path: Path, pooling: str) -> None:
    """lasttoken reads the last unpadded token: padding must stay on the right."""
    build_tiny_model(tmp_path / "tiny", "bert", minilm_path)
    encoder = Matryoshka2DEncoder(tmp_path / "tiny", pooling=pooling, batch_size=8)
    texts = ["a", "a longer text about heat pumps", "mid length one", "the longest text of all, with several more words in it"]
    batched = encoder.encode_documents(texts)
    alone = np.concatenate([encoder.encode_documents([text]) for text in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-6)


def test_a_tokenizer_without_a_pad_token_pads_with_id_0(tmp_path: Path, minilm_path: Path) -> None:
    """Padded positions are masked out, so their id changes nothing: the vectors are those with [PAD] (id 0)."""
    folder = tmp_path / "no-pad"
    shutil.copytree(minilm_path, folder, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json", "vocab.txt"))
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token is None
    texts = ["short", "a much longer text that needs the short one padded"]
    np.testing.assert_array_equal(Matryoshka2DEncoder(folder).encode_documents(texts), Matryoshka2DEncoder(minilm_path).encode_documents(texts))


# --- the cache folder -------------------------------------------------------------------------------


def test_the_cache_folder_is_mm2d_cache_dir_else_the_users_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MM2D_CACHE_DIR", str(tmp_path / "given"))
    assert cache_dir() == tmp_path / "given"
    monkeypatch.setenv("MM2D_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mm2d"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if sys.platform.startswith("linux"):  # elsewhere the platform's own folder
        assert cache_dir() == tmp_path / "home" / ".cache" / "mm2d"


# --- HTML text ------------------------------------------------------------------------------------

# sha256 of the sample folder's HTML chunk ids, one a line, as the hand-written extractor gave them
# (ids hold each chunk's source, place and content hash, so any change of text changes them).
SAMPLE_HTML_CHUNKS = (40, "af670e742fb0dd4f")


def test_the_sample_folders_html_gives_the_same_chunks_and_ids() -> None:
    chunks = [chunk for chunk in split_documents(load_folder(SAMPLE_DOCS).documents) if chunk.source.endswith(".html")]
    digest = hashlib.sha256("".join(f"{chunk.id}\n" for chunk in chunks).encode()).hexdigest()[:16]
    assert (len(chunks), digest) == SAMPLE_HTML_CHUNKS


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("", ""),
        ("<!-- a comment only -->", ""),
        ('<?xml version="1.0" encoding="utf-8"?><html><body><p>declared</p></body></html>', "declared"),
        ("<title>T</title><p>a<br>b</p><table><tr><th>k</th><td>v</td></tr><tr><td>x</td><td>y</td></tr></table>", "T\na\nb\nk v\nx y"),
        ("<p>hidden:<script>s()</script><style>p{}</style><template>t</template><noscript>n</noscript> kept</p>", "hidden: kept"),
        # a line break in the page's source is a space, as a browser shows it (the hand-written
        # extractor broke the line there; no sample file has one)
        ("<ul><li>one &amp; two</li><li>  spaced\n   out  </li></ul>", "one & two\nspaced out"),
        ("<p>unclosed<div>nested</div></div></div><p>end", "unclosed\nnested\nend"),
        ("<p><strong>Annual leave:</strong> 27 days</p>", "Annual leave: 27 days"),
    ],
)
def test_html_to_text_keeps_the_visible_text_one_block_a_line(html: str, text: str) -> None:
    assert html_to_text(html) == text
