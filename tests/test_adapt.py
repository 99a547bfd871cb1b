from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from scipy.special import erf

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.cli import build_parser, main
from mm2d_integrations.core.exit_heads import FORMAT, FORMAT_LAYERS, FORMAT_PER_SIDE, HEADS_CONFIG, HEADS_FILE
from mm2d_integrations.core.folders import INTERRUPTED, staged_folder
from mm2d_integrations.core.loading import shallow_view
from mm2d_integrations.evaluation.datasets import StsPairs
from mm2d_integrations.training import adapt as adapt_module
from mm2d_integrations.training.adapt import (
    LAYER_EPOCHS,
    PSEUDO_QUERIES,
    DepthResult,
    Rows,
    Training,
    _keeping,
    _layer_or_head,
    _pooled_rows,
    _query_side,
    _Replay,
    adapt,
    agreement,
    cut_pseudo_queries,
    fit_exit_layer,
    fit_head,
    fit_ridge,
    read_corpus,
)
from tests.conftest import GRADED_PAIRS, distinct_sentences
from tests.tiny_models import build_tiny_model

TEXTS = ["a short one", "a much longer sentence about the quarterly energy report and its numbers", "ok", "Two dogs run."]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    build_tiny_model(folder, "bert", minilm_path, pooling="mean")
    return folder


@pytest.fixture(scope="module", params=["ridge", "lowrank", "mlp"])
def adapted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, sentences: list[str]) -> Path:
    out = tmp_path_factory.mktemp("adapted") / request.param
    report = adapt(tiny_base, sentences[:80], out, exit_layers=[], method=request.param, loss="cosine", epochs=2)
    assert {result.kind for result in report.depths.values()} == {request.param} and sorted(report.depths) == [1, 2, 3]
    return out


def _hand_head(folder: Path, depth: int, pooled: np.ndarray) -> np.ndarray:
    """The head of `depth` applied with numpy, from the files as written."""
    entry = json.loads((folder / HEADS_CONFIG).read_text())["heads"][str(depth)]
    tensors = {name.removeprefix(f"{depth}."): value for name, value in load_file(folder / HEADS_FILE).items() if name.startswith(f"{depth}.")}
    standard = (pooled - tensors["mean"]) / tensors["scale"]
    if entry["kind"] == "lowrank":
        return standard @ tensors["linear.0.weight"].T @ tensors["linear.1.weight"].T + tensors["linear.1.bias"]
    mapped = standard @ tensors["linear.weight"].T + tensors["linear.bias"]
    if entry["kind"] == "mlp":
        inner = standard @ tensors["mlp.0.weight"].T + tensors["mlp.0.bias"]
        mapped += (0.5 * inner * (1 + erf(inner / np.sqrt(2)))) @ tensors["mlp.2.weight"].T + tensors["mlp.2.bias"]
    return mapped


def _normalised(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_full_depth_is_bit_identical_to_the_base(adapted: Path, tiny_base: Path) -> None:
    assert (adapted / "model.safetensors").read_bytes() == (tiny_base / "model.safetensors").read_bytes()
    assert np.array_equal(Matryoshka2DEncoder(adapted).encode_documents(TEXTS), Matryoshka2DEncoder(tiny_base).encode_documents(TEXTS))


def test_the_head_of_the_chosen_depth_applies(adapted: Path, tiny_base: Path) -> None:
    raw = Matryoshka2DEncoder(tiny_base, num_layers=2).pooled_layerwise(TEXTS, [2])[2]
    ours = Matryoshka2DEncoder(adapted, num_layers=2).encode_documents(TEXTS)
    assert not np.allclose(ours, _normalised(raw), atol=1e-2)
    np.testing.assert_allclose(ours, _normalised(_hand_head(adapted, 2, raw)), atol=1e-5)
    narrow = Matryoshka2DEncoder(adapted, num_layers=2, dimensions=8).encode_documents(TEXTS)
    np.testing.assert_allclose(narrow, _normalised(_hand_head(adapted, 2, raw)[:, :8]), atol=1e-5)


def test_encode_layerwise_equals_separately_cut_encoders(adapted: Path) -> None:
    vectors = Matryoshka2DEncoder(adapted).encode_layerwise(TEXTS, [1, 2, 3, 4])
    for depth in (1, 2, 3, 4):
        np.testing.assert_allclose(vectors[depth], Matryoshka2DEncoder(adapted, num_layers=depth).encode_documents(TEXTS), atol=1e-6)


def test_the_folder_loads_in_both_adapters(adapted: Path) -> None:
    from mm2d_integrations.langchain import Matryoshka2DEmbeddings
    from mm2d_integrations.llama_index import Matryoshka2DEmbedding

    expected = Matryoshka2DEncoder(adapted, num_layers=1).encode_documents(TEXTS)
    np.testing.assert_allclose(Matryoshka2DEmbeddings(model=adapted, num_layers=1).embed_documents(TEXTS), expected, atol=1e-6)
    llama = Matryoshka2DEmbedding(model_name=adapted, num_layers=1)
    np.testing.assert_allclose(llama.get_text_embedding_batch(TEXTS), expected, atol=1e-6)


def test_heads_change_the_fingerprint_and_chroma_refuses_the_adapted_encoder(
    adapted: Path, tiny_base: Path, tmp_path: Path
) -> None:
    from mm2d_integrations.chroma import EmbeddingSpaceMismatch, chroma_client, open_collection

    copy = tmp_path / "copy"
    shutil.copytree(adapted, copy, ignore=shutil.ignore_patterns(HEADS_FILE, HEADS_CONFIG))
    base = Matryoshka2DEncoder(copy, num_layers=2)
    assert base.fingerprint["weights"] == Matryoshka2DEncoder(tiny_base, num_layers=2).fingerprint["weights"]
    assert Matryoshka2DEncoder(adapted, num_layers=2).fingerprint["weights"] != base.fingerprint["weights"]
    client = chroma_client(tmp_path / "chroma")
    open_collection(base, "docs", client=client).add(ids=["a"], documents=["a document"])
    with pytest.raises(EmbeddingSpaceMismatch, match="weights"):
        open_collection(Matryoshka2DEncoder(adapted, num_layers=2), "docs", client=client)


def test_a_learned_head_is_closer_to_full_depth_on_held_out_text(
    minilm_path: Path, sts_train: StsPairs, sts_dev: StsPairs, tmp_path: Path
) -> None:
    """The thresholds were measured on STS Benchmark text: learned on train sentences, checked on dev ones."""
    held_out = distinct_sentences(sts_dev)[:100]
    report = adapt(minilm_path, distinct_sentences(sts_train)[:300], tmp_path / "out", layers=[2], method="ridge")
    teacher = Matryoshka2DEncoder(minilm_path).encode_documents(held_out)
    raw = Matryoshka2DEncoder(minilm_path, num_layers=2).encode_documents(held_out)
    headed = Matryoshka2DEncoder(tmp_path / "out", num_layers=2).encode_documents(held_out)
    raw_cosine, head_cosine = (float((vectors * teacher).sum(1).mean()) for vectors in (raw, headed))
    assert head_cosine > raw_cosine + 0.2 and head_cosine > 0.6
    assert report.depths[2].cosine > report.depths[2].raw_cosine


def test_ctrl_c_that_a_library_drops_still_stops_adapt_with_no_output(
    tiny_base: Path, sentences: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The KeyboardInterrupt of a Ctrl-C can land in code that drops it (a finalizer, a broad except):
    the run once finished and exited 0 (docs/reliability.md). It now ends 130 and moves nothing in."""
    corpus = tmp_path / "sentences.txt"
    corpus.write_text("\n".join(sentences[:60]) + "\n", encoding="utf-8")
    out = tmp_path / "adapted"
    fit = adapt_module.fit_head

    def dropping_an_interrupt(*args: object, **kwargs: object) -> object:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises here
        except KeyboardInterrupt:
            pass  # what a finalizer does with it
        return fit(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(adapt_module, "fit_head", dropping_an_interrupt)
    assert main(["adapt", "--model", str(tiny_base), "--corpus", str(corpus), "--out", str(out), "--layers", "1", "--exit-layers", "none", "--epochs", "1"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == [corpus]  # nor a staging folder
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the command's handler is gone again
    assert not INTERRUPTED.is_set()  # and a later staged folder in this process is moved in as usual
    with staged_folder(tmp_path / "later", "test"):
        pass
    assert (tmp_path / "later").is_dir()


def test_cli_end_to_end(tiny_base: Path, sentences: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "sentences.txt"
    corpus.write_text("\n".join(sentences[:60]) + "\n\n", encoding="utf-8")
    out = tmp_path / "adapted"
    options = ["--method", "lowrank", "--epochs", "1", "--loss", "listwise", "--sides", "per-side", "--pseudo-queries", "1", "--temperature", "0.2", "--top-k", "4"]
    assert main(["adapt", "--model", str(tiny_base), "--corpus", str(corpus), "--out", str(out), "--layers", "1", "3", *options]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"on 60 texts and \d+ pseudo-queries \(6 texts held out\)", printed) and "lowrank+listwise / lowrank+listwise" in printed
    config = json.loads((out / HEADS_CONFIG).read_text())
    assert sorted(config["heads"]) == sorted(config["query_heads"]) == ["1", "3"]
    assert (config["loss"], config["sides"], config["temperature"], config["top_k"]) == ("listwise", "per-side", 0.2, 4)
    assert main(["eval", "sts", str(GRADED_PAIRS), "--model", str(out), "--dims", "32"]) == 0
    assert "sts cosine Spearman x100" in capsys.readouterr().out


def test_a_folder_of_documents_and_a_jsonl_are_corpora(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\nFirst paragraph.\n\nSecond paragraph.", encoding="utf-8")
    assert read_corpus(tmp_path / "docs") == ["# Title\n\nFirst paragraph.\n\nSecond paragraph."]
    (tmp_path / "corpus.jsonl").write_text('{"_id": "1", "title": "T", "text": "body"}\n{"_id": "2", "text": "x"}\n', encoding="utf-8")
    assert read_corpus(tmp_path / "corpus.jsonl") == ["T body", "x"]


@pytest.mark.parametrize(
    ("corpus", "options", "message"),
    [
        ("missing.txt", [], "corpus .*missing.txt' does not exist"),
        ("empty.txt", [], "holds no text"),
        ("few.txt", [], "has 3 distinct texts; adapting needs at least 10"),
        ("good.txt", ["--layers", "4"], r"layers must be an int in \[1, 3\], got 4"),
        ("good.txt", ["--layers", "0"], r"layers must be an int in \[1, 3\], got 0"),
        ("good.txt", ["--exit-layers", "4"], r"exit_layers must be an int in \[1, 3\], got 4"),
        ("good.txt", ["--layers", "1", "--exit-layers", "2"], r"exit_layers \[2\] must be among the depths adapted, layers \[1\]"),
        ("good.txt", ["--layer-epochs", "0"], r"layer_epochs must be an int in \[1, 10000\], got 0"),
        ("good.txt", ["--out-exists"], "exists and is not an empty folder"),
        ("good.txt", ["--temperature", "0"], r"temperature must be a number in \[0.0001, 10\], got 0.0"),
        ("good.txt", ["--top-k", "0"], r"top_k must be an int in \[1, 65536\], got 0"),
        ("good.txt", ["--pseudo-queries", "-1"], r"pseudo_queries must be an int in \[0, 100\], got -1"),
        ("good.txt", ["--sides", "per-side", "--pseudo-queries", "0"], "sides='per-side' needs text on the query side"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(
    tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], corpus: str, options: list[str], message: str
) -> None:
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    (tmp_path / "few.txt").write_text("a\nb\nc\na\n", encoding="utf-8")
    (tmp_path / "good.txt").write_text("\n".join(f"sentence number {index}" for index in range(20)), encoding="utf-8")
    out = tmp_path / "out"
    if options == ["--out-exists"]:
        out.mkdir()
        (out / "something").write_text("x")
        options = []
    arguments = ["adapt", "--model", str(tiny_base), "--corpus", str(tmp_path / corpus), "--out", str(out), *options]
    assert main(arguments) == 2
    assert re.search("mm2d: error: .*" + message, capsys.readouterr().err)
    given = {option.removeprefix("--").replace("-", "_"): value for option, value in zip(options[::2], options[1::2])}
    typed = {name: value if name == "sides" else float(value) if name == "temperature" else int(value) for name, value in given.items()}
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        texts = read_corpus(tmp_path / corpus)
        adapt(tiny_base, texts, out, **{"method": "ridge", **typed, **{name: [typed[name]] for name in ("layers", "exit_layers") if name in typed}})


def test_heads_refuse_another_pooling_and_a_second_adaptation(adapted: Path, sentences: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exit heads were learned with pooling 'mean', not 'cls'"):
        Matryoshka2DEncoder(adapted, pooling="cls")
    with pytest.raises(ValueError, match="already has exit heads"):
        adapt(adapted, sentences[:20], tmp_path / "again")


def test_heads_that_do_not_match_their_description_are_refused(adapted: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(adapted, broken)
    config = json.loads((broken / HEADS_CONFIG).read_text())
    config["heads"]["1"]["kind"] = "lowrank" if config["heads"]["1"]["kind"] != "lowrank" else "linear"
    config["heads"]["1"]["inner"] = 7
    (broken / HEADS_CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match"):
        Matryoshka2DEncoder(broken, num_layers=1)


def test_same_depth_and_cross_depth_retrieval_from_one_pass(adapted: Path, graded_pairs: StsPairs, tmp_path: Path) -> None:
    from mm2d_integrations.evaluation.cross_depth import evaluate_depths
    from mm2d_integrations.evaluation.datasets import read_beir
    from mm2d_integrations.evaluation.grid import evaluate_retrieval
    from mm2d_integrations.evaluation.metrics import ndcg_at_k
    from mm2d_integrations.evaluation.ranking import top_k
    from tests.test_evaluation_datasets import write_sts_retrieval_set

    dataset = read_beir(write_sts_retrieval_set(tmp_path / "beir", graded_pairs, 40))
    encoder = Matryoshka2DEncoder(adapted)
    scores = evaluate_depths(encoder, dataset, [4, 2, 1])
    grid = evaluate_retrieval(encoder, dataset, [4, 2, 1], [encoder.max_dimensions]).scores
    for depth in (4, 2, 1):
        for metric, value in scores.same_depth[depth].items():
            assert value == pytest.approx(grid[metric][depth, encoder.max_dimensions], abs=1e-9)
    assert scores.cross_depth[4] == scores.same_depth[4]
    documents = encoder.encode_documents(dataset.documents)
    queries = Matryoshka2DEncoder(adapted, num_layers=2).encode_queries(dataset.queries)
    own = np.array([dataset.corpus_ids.index(query_id) if query_id in dataset.corpus_ids else -1 for query_id in dataset.query_ids])
    ranked = [[dataset.corpus_ids[index] for index in row if index != skip] for row, skip in zip(top_k(queries, documents, 100, own), own)]
    expected = 100 * np.mean([ndcg_at_k(ranking, dataset.qrels[query_id], 10) for ranking, query_id in zip(ranked, dataset.query_ids)])
    assert scores.cross_depth[2]["nDCG@10"] == pytest.approx(expected, abs=1e-6)
    assert scores.cross_depth[2] != scores.same_depth[2]


def test_pseudo_queries_are_sentences_of_a_text_or_spans_of_one_sentence() -> None:
    texts = [
        "The boiler needs a yearly service. Book it with an approved engineer! Short one.",
        "a single sentence of exactly ten words about heat pumps here",
        "too short",
    ]
    queries, sources = cut_pseudo_queries(texts, 2, seed=0)
    assert sorted(zip(sources, queries))[:2] == [(0, "Book it with an approved engineer!"), (0, "The boiler needs a yearly service.")]
    spans = [query for query, source in zip(queries, sources) if source == 1]
    assert spans and all(len(span.split()) == 5 and span in texts[1] for span in spans)
    assert 2 not in sources
    assert cut_pseudo_queries(texts, 0, seed=0) == ([], [])
    long_sentence = " ".join(f"w{index}" for index in range(100)) + ". " + " ".join(f"v{index}" for index in range(50))
    assert all(len(query.split()) == 32 for query in cut_pseudo_queries([long_sentence], 2, seed=0)[0])


def _head_tensors(folder: Path) -> dict[str, np.ndarray]:
    return load_file(folder / HEADS_FILE)


@pytest.mark.parametrize(
    "options",
    [{"loss": "similarity"}, {"loss": "listwise"}, {"pseudo_queries": 0}, {"loss": "similarity", "temperature": 0.5}, {"loss": "listwise", "top_k": 2}],
    ids=["similarity", "listwise", "no-pseudo-queries", "temperature", "top-k"],
)
def test_each_loss_and_option_changes_the_heads(options: dict, tiny_base: Path, sentences: list[str], tmp_path: Path) -> None:
    """Each against the same adaptation with that one option at its reference value."""
    reference = {"loss": "listwise" if "top_k" in options else "similarity" if "temperature" in options else "cosine", "pseudo_queries": 2}
    common = {"layers": [2], "exit_layers": [], "method": "mlp", "epochs": 2, "mlp_hidden": 16}
    adapt(tiny_base, sentences[:60], tmp_path / "reference", **common, **reference)
    adapt(tiny_base, sentences[:60], tmp_path / "changed", **common, **{**reference, **options})
    before, after = _head_tensors(tmp_path / "reference"), _head_tensors(tmp_path / "changed")
    assert before.keys() == after.keys()
    assert any(not np.allclose(before[name], after[name], atol=1e-6) for name in before)
    recorded = json.loads((tmp_path / "changed" / HEADS_CONFIG).read_text())
    assert all(recorded[name] == value for name, value in options.items())
    assert (recorded["pseudo_query_count"] == 0) == (options.get("pseudo_queries") == 0)


def _synthetic_rows(seed: int = 0, documents: int = 120, width: int = 12) -> Rows:
    """Documents, two queries each, and a non-linear teacher; the first 20 documents held out."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, generator=generator)
    pooled = torch.randn(documents, width, generator=generator)
    queries = pooled.repeat(2, 1) + 0.5 * torch.randn(2 * documents, width, generator=generator)
    teacher = lambda vectors: torch.nn.functional.normalize(torch.tanh(vectors @ mixing), dim=1)  # noqa: E731
    held = torch.zeros(documents, dtype=torch.bool)
    held[:20] = True
    return Rows(pooled, teacher(pooled), queries, teacher(queries), torch.arange(documents).repeat(2), held)


def test_agreement_is_measured_on_the_held_out_queries_only() -> None:
    rows = _synthetic_rows()
    head = torch.nn.Linear(12, 12)
    fitting_queries = ~rows.held[rows.query_sources]
    noisy = rows.queries.clone()
    noisy[fitting_queries] = torch.randn(int(fitting_queries.sum()), 12)
    changed_fitting = Rows(rows.documents, rows.document_targets, noisy, rows.query_targets, rows.query_sources, rows.held)
    assert agreement(changed_fitting, head, head) == agreement(rows, head, head)
    noisy = rows.queries.clone()
    noisy[~fitting_queries] = torch.randn(int((~fitting_queries).sum()), 12)
    changed_held = Rows(rows.documents, rows.document_targets, noisy, rows.query_targets, rows.query_sources, rows.held)
    assert agreement(changed_held, head, head) != agreement(rows, head, head)
    perfect = agreement(Rows(rows.document_targets, rows.document_targets, rows.query_targets, rows.query_targets, rows.query_sources, rows.held),
                        torch.nn.Identity(), torch.nn.Identity())
    assert perfect == 1.0


def test_the_head_kept_is_the_one_that_agrees_best_on_held_out_text() -> None:
    rows = _synthetic_rows()
    training = Training("auto", ("cosine", "similarity"), mlp_hidden=16, epochs=2, seed=0, temperature=0.05, top_k=4)
    head, query_head, result = fit_head(rows, training)
    assert query_head is None and set(result.agreements) == {"ridge", "lowrank", "mlp", "mlp+similarity"}
    assert result.kind == max(result.agreements, key=lambda name: (result.agreements[name], result.tried[name]))
    assert result.agreement == agreement(rows, head, head) > result.raw_agreement
    # moving which documents are held out changes what is measured, and so the numbers the choice rests on
    moved = Rows(rows.documents, rows.document_targets, rows.queries, rows.query_targets, rows.query_sources, rows.held.roll(50))
    assert fit_head(moved, training)[2].agreements != result.agreements


@pytest.fixture(scope="module")
def per_side(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, sentences: list[str]) -> Path:
    out = tmp_path_factory.mktemp("per-side") / "adapted"
    report = adapt(tiny_base, sentences[:80], out, layers=[2], exit_layers=[], method="ridge", sides="per-side", pseudo_queries=PSEUDO_QUERIES)
    assert report.depths[2].query_kind == "ridge" and report.depths[2].chosen == "ridge / ridge"
    return out


def test_per_side_heads_route_queries_and_documents(per_side: Path, tiny_base: Path) -> None:
    config = json.loads((per_side / HEADS_CONFIG).read_text())
    assert config["format"] == FORMAT_PER_SIDE and list(config["query_heads"]) == ["2"]
    tensors = load_file(per_side / HEADS_FILE)
    raw = Matryoshka2DEncoder(tiny_base, num_layers=2).pooled_layerwise(TEXTS, [2])[2]
    document_head = _hand_head(per_side, 2, raw)
    query_tensors = {name.removeprefix("q2."): value for name, value in tensors.items() if name.startswith("q2.")}
    query_head = (raw - query_tensors["mean"]) / query_tensors["scale"] @ query_tensors["linear.weight"].T + query_tensors["linear.bias"]
    assert not np.allclose(_normalised(document_head), _normalised(query_head), atol=1e-3)
    encoder = Matryoshka2DEncoder(per_side, num_layers=2)
    np.testing.assert_allclose(encoder.encode_documents(TEXTS), _normalised(document_head), atol=1e-5)
    np.testing.assert_allclose(encoder.encode_queries(TEXTS), _normalised(query_head), atol=1e-5)
    shallow_queries = Matryoshka2DEncoder(per_side, query_num_layers=2)  # documents at full depth, queries through the query head
    np.testing.assert_allclose(shallow_queries.encode_queries(TEXTS), _normalised(query_head), atol=1e-5)
    np.testing.assert_array_equal(shallow_queries.encode_documents(TEXTS), Matryoshka2DEncoder(tiny_base).encode_documents(TEXTS))
    layerwise = encoder.encode_layerwise(TEXTS, [2], side="query")[2]
    np.testing.assert_allclose(layerwise, _normalised(query_head), atol=1e-5)
    with pytest.raises(ValueError, match="side must be one of document, query, got 'answer'"):
        encoder.encode(TEXTS, side="answer")


def test_per_side_heads_refuse_an_export_and_a_server(per_side: Path, tmp_path: Path) -> None:
    from mm2d_integrations.serving.export import export_model

    for format in ("sentence-transformers", "onnx"):
        with pytest.raises(ValueError, match="separate query and document exit heads at num_layers=2.*sides='shared'"):
            export_model(per_side, tmp_path / format, num_layers=2, format=format)
        assert not (tmp_path / format).exists()
    assert (export_model(per_side, tmp_path / "full") / "modules.json").is_file()  # full depth has no head at all
    from mm2d_integrations.serving.server import create_app

    with pytest.raises(ValueError, match="separate query and document exit heads .*cannot tell apart"):
        create_app(Matryoshka2DEncoder(per_side))


def test_shared_heads_keep_format_1(adapted: Path) -> None:
    assert json.loads((adapted / HEADS_CONFIG).read_text())["format"] == FORMAT


def test_the_defaults_fit_pseudo_queries_with_the_cosine_loss() -> None:
    """Pseudo-queries lift rankings (sample set, 3 layers: 82% -> 90% of full nDCG@10) within the time target
    (228 s for 10,566 sentences, every depth); the similarity loss costs 2.5x that: opt-in (docs/adapt.md)."""
    parsed = build_parser().parse_args(["adapt", "--corpus", "c.txt", "--out", "o"])
    assert (parsed.loss, parsed.pseudo_queries) == ("cosine", 2) == ("cosine", PSEUDO_QUERIES)
    defaults = inspect.signature(adapt).parameters
    assert (defaults["loss"].default, defaults["pseudo_queries"].default) == ("cosine", 2)


# ---- exit layers (method "layer"): a retrained last layer per depth ---------------------------------


@pytest.fixture(scope="module")
def layered(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, sentences: list[str]) -> Path:
    out = tmp_path_factory.mktemp("layered") / "adapted"
    report = adapt(tiny_base, sentences[:80], out, layers=[1, 2], exit_layers=[1, 2])
    assert {result.kind for result in report.depths.values()} == {"layer"} and sorted(report.depths) == [1, 2]
    return out


def _hand_exit_layer(folder: Path, base: Path, depth: int, texts: list[str]) -> np.ndarray:
    """Depth `depth` run by transformers itself, its last layer given the written exit layer's weights,
    mean-pooled, through the written head: what the encoder must give."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(base, num_hidden_layers=depth).eval()
    tensors = {name.removeprefix(f"layer{depth}."): torch.from_numpy(value) for name, value in load_file(folder / HEADS_FILE).items() if name.startswith(f"layer{depth}.")}
    model.encoder.layer[depth - 1].load_state_dict(tensors)
    batch = AutoTokenizer.from_pretrained(base)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return _normalised(_hand_head(folder, depth, ((hidden * mask).sum(1) / mask.sum(1)).numpy()))


def test_an_exit_layer_runs_instead_of_the_last_base_layer(layered: Path, tiny_base: Path, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    config = json.loads((layered / HEADS_CONFIG).read_text())
    assert config["format"] == FORMAT_LAYERS and sorted(config["layers"]) == ["1", "2"]
    assert (layered / "model.safetensors").read_bytes() == (tiny_base / "model.safetensors").read_bytes()
    tensors = load_file(layered / HEADS_FILE)
    base = {name.removeprefix("encoder.layer.1."): value for name, value in load_file(tiny_base / "model.safetensors").items() if name.startswith("encoder.layer.1.")}
    assert any(not np.array_equal(tensors[f"layer2.{name}"], value) for name, value in base.items())  # trained
    moved = tmp_path / "moved"  # the layer moved further than a few tiny steps do, so that running it shows
    shutil.copytree(layered, moved)
    noise = np.random.default_rng(0)
    save_file({name: value + (0.1 * noise.standard_normal(value.shape)).astype(value.dtype) if name.startswith("layer2.") else value for name, value in tensors.items()}, moved / HEADS_FILE)
    ours = Matryoshka2DEncoder(moved, num_layers=2).encode_documents(TEXTS)
    np.testing.assert_allclose(ours, _hand_exit_layer(moved, tiny_base, 2, TEXTS), atol=1e-5)
    raw = Matryoshka2DEncoder(tiny_base, num_layers=2).pooled_layerwise(TEXTS, [2])[2]
    assert not np.allclose(ours, _normalised(_hand_head(moved, 2, raw)), atol=1e-2)  # not the head alone: the layer runs
    np.testing.assert_array_equal(Matryoshka2DEncoder(layered).encode_documents(TEXTS), Matryoshka2DEncoder(tiny_base).encode_documents(TEXTS))
    np.testing.assert_array_equal(  # a depth without an exit layer is the plain cut
        Matryoshka2DEncoder(layered, num_layers=3).encode_documents(TEXTS), Matryoshka2DEncoder(tiny_base, num_layers=3).encode_documents(TEXTS)
    )


def test_exit_layers_in_one_pass_and_across_depths(layered: Path, tiny_base: Path) -> None:
    encoder = Matryoshka2DEncoder(layered)
    vectors = encoder.encode_layerwise(TEXTS, [1, 2, 3, 4])
    for depth in (1, 2, 3, 4):
        np.testing.assert_allclose(vectors[depth], Matryoshka2DEncoder(layered, num_layers=depth).encode_documents(TEXTS), atol=1e-6)
    assert {1, 2, 4} <= encoder.shared_space_depths and 3 not in encoder.shared_space_depths
    cross = Matryoshka2DEncoder(layered, query_num_layers=2)  # documents at full depth, queries through the exit layer
    np.testing.assert_allclose(cross.encode_queries(TEXTS), Matryoshka2DEncoder(layered, num_layers=2).encode_queries(TEXTS), atol=1e-6)
    np.testing.assert_array_equal(cross.encode_documents(TEXTS), Matryoshka2DEncoder(tiny_base).encode_documents(TEXTS))
    with pytest.raises(ValueError, match="query_num_layers=3 with num_layers=4"):
        Matryoshka2DEncoder(layered, query_num_layers=3)


def test_exit_layers_refuse_backends_that_do_not_run_them(layered: Path) -> None:
    for options, named in (({"backend": "onnx"}, "'onnx' backend"), ({"compute_precision": "int8"}, "int8 compute precision")):
        with pytest.raises(ValueError, match=f"has exit layers .*which the {named} does not run.*mm2d export"):
            Matryoshka2DEncoder(layered, **options)


def test_an_exit_layer_serves(layered: Path) -> None:
    from fastapi.testclient import TestClient

    from mm2d_integrations.serving.server import create_app

    encoder = Matryoshka2DEncoder(layered, num_layers=2)
    with TestClient(create_app(encoder)) as client:
        answer = client.post("/v1/embeddings", json={"model": encoder.model_name, "input": TEXTS})
    assert answer.status_code == 200
    served = np.array([row["embedding"] for row in answer.json()["data"]])
    np.testing.assert_allclose(served, encoder.encode_documents(TEXTS), atol=1e-6)


def test_an_exit_layer_is_closer_to_full_depth_than_the_head_alone(
    minilm_path: Path, sts_train: StsPairs, sts_dev: StsPairs, tmp_path: Path
) -> None:
    """Learned on STS train sentences, checked on dev ones: the retrained layer beats the ridge head it starts from."""
    held_out = distinct_sentences(sts_dev)[:100]
    texts = distinct_sentences(sts_train)[:600]
    adapt(minilm_path, texts, tmp_path / "ridge", layers=[2], method="ridge")  # no exit layer: 3 is the default one
    adapt(minilm_path, texts, tmp_path / "layer", layers=[2], exit_layers=[2], layer_epochs=3)  # 3 x 34 steps: a short run of any length ends whole
    teacher = Matryoshka2DEncoder(minilm_path).encode_documents(held_out)
    cosines = {
        method: float((Matryoshka2DEncoder(tmp_path / method, num_layers=2).encode_documents(held_out) * teacher).sum(1).mean())
        for method in ("ridge", "layer")
    }
    assert cosines["layer"] > cosines["ridge"] + 0.005, cosines


def test_cli_adapts_with_exit_layers(tiny_base: Path, sentences: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "sentences.txt"
    corpus.write_text("\n".join(sentences[:40]) + "\n", encoding="utf-8")
    arguments = ["adapt", "--model", str(tiny_base), "--corpus", str(corpus)]
    assert main([*arguments, "--out", str(tmp_path / "out"), "--layers", "1", "2", "--exit-layers", "1", "--layer-epochs", "1", "--sides", "per-side", "--verbose"]) == 0
    printed, shown = capsys.readouterr()
    assert re.search(r"exit layer 1: 100%.* 3/3 ", shown)  # its training steps, not minutes of silence
    assert re.search(r"\n\s+1  layer\s", printed) and re.search(r"\n\s+2  \w+ / \w+\s", printed)  # per-side heads beside the exit layer
    assert "where an exit layer was tried (layer), it and the best head rank the held-out texts and up to 1,000 documents" in printed
    config = json.loads((tmp_path / "out" / HEADS_CONFIG).read_text())
    assert config["layers"] == {"1": {"replaces": 1}} and config["exit_layers"] == [1] and sorted(config["query_heads"]) == ["2"]
    assert config["exit_layer_start"] == "last"
    assert main([*arguments, "--out", str(tmp_path / "own"), "--layers", "1", "--exit-layers", "1", "--layer-epochs", "1", "--exit-layer-start", "own"]) == 0
    assert json.loads((tmp_path / "own" / HEADS_CONFIG).read_text())["exit_layer_start"] == "own"
    with pytest.raises(SystemExit) as exited:
        main([*arguments, "--out", str(tmp_path / "first"), "--exit-layer-start", "first"])
    assert exited.value.code == 2 and "argument --exit-layer-start: invalid choice: 'first'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="exit_layer_start must be one of last, own, got 'first'"):
        adapt(tiny_base, sentences[:40], tmp_path / "first", exit_layer_start="first")
    assert main([*arguments, "--out", str(tmp_path / "none"), "--exit-layers", "none"]) == 0
    assert "layers" not in json.loads((tmp_path / "none" / HEADS_CONFIG).read_text())
    assert main([*arguments, "--out", str(tmp_path / "both"), "--exit-layers", "2", "none"]) == 2
    assert "--exit-layers takes depths or the word none, not both" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse's own exit, as for every malformed argument
        main([*arguments, "--out", str(tmp_path / "word"), "--exit-layers", "half"])
    assert exited.value.code == 2 and "argument --exit-layers: not a depth: 'half' (a whole number, or none)" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("both", "word", "first"))


def test_by_default_an_exit_layer_is_tried_at_the_middle_depth_and_kept_where_it_ranks_better(
    tiny_base: Path, sentences: list[str], tmp_path: Path
) -> None:
    report = adapt(tiny_base, sentences[:40], tmp_path / "out", layer_epochs=1)  # 4 layers: the middle is 2
    middle = report.depths[2]
    assert "layer" in middle.tried and len(middle.tried) == len(middle.agreements) == 2  # the layer and the best head, on the same documents
    rival = next(name for name in middle.tried if name != "layer")
    layer_won = (middle.agreements["layer"], middle.tried["layer"]) > (middle.agreements[rival], middle.tried[rival])
    assert middle.kind == ("layer" if layer_won else rival)
    assert all("layer" not in report.depths[depth].tried for depth in (1, 3))
    config = json.loads((tmp_path / "out" / HEADS_CONFIG).read_text())
    assert config.get("layers", {}) == ({"2": {"replaces": 2}} if layer_won else {}) and config["exit_layers"] == [2]
    assert sorted(config["heads"]) == ["1", "2", "3"]
    assert inspect.signature(adapt).parameters["layer_epochs"].default == LAYER_EPOCHS == 2
    assert build_parser().parse_args(["adapt", "--corpus", "c", "--out", "o"]).exit_layers is None  # the command line's default is adapt's


@pytest.mark.parametrize("depth", [2, 3])
def test_the_layers_below_an_exit_layer_replayed_give_what_running_them_gives(tiny_base: Path, sentences: list[str], depth: int) -> None:
    """Kept from the teacher's pass and handed on, the frozen layers' output is theirs: the trained view computes what the model does."""
    encoder = Matryoshka2DEncoder(tiny_base)
    loaded = encoder.loaded_model
    texts = sentences[:30]
    replay, tight = _Replay(1 << 30), _Replay(100)
    with _keeping(encoder, {depth: replay, depth - 1 if depth > 2 else depth + 1: tight}) as before_batch:
        encoder.pooled_layerwise(texts, [1, 4], before_batch=before_batch)
        encoder.pooled_layerwise(texts[:10], [1, 4], prompt="query: ", before_batch=before_batch)
    assert replay.states is not None and len(replay.states) == 40 and tight.states is None  # over its budget: nothing kept
    assert not [hook for layer in loaded.layers for hook in layer._forward_hooks.values() if "_keeping" in hook.__qualname__]  # ours went
    real, replayed = shallow_view(loaded.model, loaded.stack, depth), shallow_view(loaded.model, loaded.stack, depth, below=replay)
    with torch.no_grad():
        for batch, prompt in ((texts[:16], ""), (texts[20:23], ""), (texts[:4], "query: ")):
            torch.testing.assert_close(
                encoder.pooled_through(replayed, batch, prompt, before_batch=replay.load), encoder.pooled_through(real, batch, prompt), atol=1e-5, rtol=0
            )
        with pytest.raises(RuntimeError, match="not those of the batch running"):
            encoder.pooled_through(replayed, texts[:3], "", before_batch=lambda token_ids: replay.load(token_ids[:2]))


def test_a_pass_through_an_exit_layers_depth_runs_batches_of_like_length_and_keeps_the_texts_order(tiny_base: Path, sentences: list[str]) -> None:
    """A random training batch of pseudo-queries padded to its longest is mostly padding: it runs as the encoder's passes do."""
    encoder = Matryoshka2DEncoder(tiny_base, batch_size=4)
    loaded = encoder.loaded_model
    texts = [*sentences[:9], " ".join(sentences[9:14]), "ok"]
    seen: list[list[int]] = []
    pooled = encoder.pooled_through(shallow_view(loaded.model, loaded.stack, 2), texts, "query: ", before_batch=lambda token_ids: seen.append([len(ids) for ids in token_ids]))
    np.testing.assert_allclose(pooled.detach().numpy(), encoder.pooled_layerwise(texts, [2], prompt="query: ")[2], atol=1e-5)
    lengths = [length for batch in seen for length in batch]
    assert sorted(lengths, reverse=True) == lengths == sorted((len(ids) for ids in encoder.tokenize(texts, "query: ")), reverse=True)
    assert [len(batch) for batch in seen] == [4, 4, 3]
    assert encoder.pooled_through(loaded.model, [], "query: ").shape == (0, loaded.hidden_size)


def test_an_exit_layer_trains_alike_with_the_layers_below_kept_or_run_each_step(
    tiny_base: Path, sentences: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = []
    load = _Replay.load
    monkeypatch.setattr(_Replay, "load", lambda self, token_ids: (loads.append(len(token_ids)), load(self, token_ids))[1])
    adapt(tiny_base, sentences[:40], tmp_path / "kept", layers=[3], exit_layers=[3], layer_epochs=1)
    # batches of at most 32 (the encoder's batch_size): the head's start (the 40 texts, then their 74 pseudo-queries), texts and pseudo-
    # queries at each of the 3 steps (36 texts, 16 a step; 96 queries), then the ranked pass in float32 (the 40 texts and 74 queries again)
    everything = [32, 8, 32, 32, 10]
    assert loads == everything + [16, 32, 32, 32] * 2 + [4, 32, 32, 32] + everything
    monkeypatch.setattr(adapt_module, "MAX_KEPT_STATES", 0)  # too little room: every step runs the layers below
    adapt(tiny_base, sentences[:40], tmp_path / "run", layers=[3], exit_layers=[3], layer_epochs=1)
    assert len(loads) == len(everything) + 12 + len(everything)  # the second run kept nothing
    kept, run = load_file(tmp_path / "kept" / HEADS_FILE), load_file(tmp_path / "run" / HEADS_FILE)
    assert kept.keys() == run.keys()
    for name in kept:
        np.testing.assert_allclose(kept[name], run[name], atol=2e-3, err_msg=name)


def _exit_layer_inputs(teacher: Matryoshka2DEncoder, texts: list[str], depth: int) -> tuple[Rows, list[str], Training]:
    """What `fit_exit_layer` takes beside the teacher and texts, as adapt builds it: the rows at `depth`
    (a tenth of the texts held out), the query-side texts, and a short training."""
    queries, sources = cut_pseudo_queries(texts, PSEUDO_QUERIES, 0)
    (rows,) = _pooled_rows(teacher, texts, queries, sources, [depth], len(texts) // 10, 0, False, {}).values()
    return rows, _query_side(teacher, texts, queries, sources)[0], Training("ridge", ("cosine",), 8, 1, 0, 0.05, 4)


def test_a_distilled_student_retrains_every_layer_of_its_depth_and_leaves_the_base_alone(tiny_base: Path, sentences: list[str]) -> None:
    """`fit_exit_layer(..., retrained=depth)` (the benchmark's distilled student): copies of all the depth's
    layers are trained, in place of the base ones in its view, and not one base weight moves."""
    teacher = Matryoshka2DEncoder(tiny_base)
    loaded = teacher.loaded_model
    texts = sentences[:40]
    rows, asked, training = _exit_layer_inputs(teacher, texts, 2)
    base = {name: weight.clone() for name, weight in loaded.model.state_dict().items()}
    before = teacher.encode_documents(TEXTS)
    layers, _, through = fit_exit_layer(teacher, 2, rows, texts, asked, training, 1, retrained=2)
    assert len(layers) == 2 and all(layer is not loaded.layers[index] for index, layer in enumerate(layers))
    started = [loaded.layers[0], loaded.layers[-1]]  # the last one starts as the model's last layer
    for index, layer in enumerate(layers):  # each retrained, none of them the base layer, none left trainable
        moved = [name for name, weight in layer.state_dict().items() if not torch.equal(weight, started[index].state_dict()[name])]
        assert moved and not any(weight.requires_grad for weight in layer.parameters()), index
    assert all(torch.equal(weight, base[name]) for name, weight in loaded.model.state_dict().items())
    assert np.array_equal(teacher.encode_documents(TEXTS), before)
    view = shallow_view(loaded.model, loaded.stack, 2, layers)
    assert list(view.encoder.layer) == layers and len(through.documents) == int(rows.held.sum())
    with pytest.raises(ValueError, match=r"retrained must be .*\[1, 2\]"):
        fit_exit_layer(teacher, 2, rows, texts, asked, training, 1, retrained=3)
    with pytest.raises(ValueError, match="a replay holds the output of every layer but the last"):
        fit_exit_layer(teacher, 2, rows, texts, asked, training, 1, replay=_Replay(1 << 20), retrained=2)
    with pytest.raises(ValueError, match="3 layers cannot replace the last of 2"):
        shallow_view(loaded.model, loaded.stack, 2, [*layers, layers[0]])


@pytest.mark.parametrize("exit_layer_start", ["last", "own"])
def test_an_exit_layer_starts_as_the_models_last_layer_under_a_ridge_head_fitted_to_it(
    tiny_base: Path, sentences: list[str], monkeypatch: pytest.MonkeyPatch, exit_layer_start: str
) -> None:
    """By default the exit layer at depth 3 starts with the weights of the model's last layer (as asked, of
    its own), in a copy of the layer at its own position, and the head starts at the ridge solution on
    what that started layer gives, not on the plain cut's states. Learning rates 0: the start is what comes back."""
    monkeypatch.setattr(adapt_module, "LAYER_LEARNING_RATE", 0.0)
    monkeypatch.setattr(adapt_module, "LEARNING_RATE", 0.0)
    teacher = Matryoshka2DEncoder(tiny_base)
    loaded = teacher.loaded_model
    texts = sentences[:60]
    rows, asked, training = _exit_layer_inputs(teacher, texts, 3)
    everything = torch.ones_like(rows.held)
    (layer,), head, through = fit_exit_layer(teacher, 3, rows, texts, asked, training, 1, ranked=everything, exit_layer_start=exit_layer_start)
    start = loaded.layers[len(loaded.layers) - 1 if exit_layer_start == "last" else 2]
    assert len(loaded.layers) > 3 and layer is not start
    assert all(torch.equal(weight, start.state_dict()[name]) for name, weight in layer.state_dict().items())
    expected = fit_ridge(*through.side(fitting=True).pointwise("shared"), *through.side(fitting=False).pointwise("shared"))
    plain = fit_ridge(*rows.side(fitting=True).pointwise("shared"), *rows.side(fitting=False).pointwise("shared"))
    inputs = torch.cat([through.documents, through.queries])
    with torch.no_grad():
        assert float((head(inputs) - expected(inputs)).abs().max()) < 1e-3  # about 6e-5
        if exit_layer_start == "last":  # the plain cut's states would have given another head
            assert float((plain(inputs) - expected(inputs)).abs().max()) > 1e-3  # about 8e-3
    with pytest.raises(ValueError, match="exit_layer_start must be one of last, own, got 'first'"):
        fit_exit_layer(teacher, 3, rows, texts, asked, training, 1, exit_layer_start="first")


def test_an_exit_layer_at_depth_1_of_a_modernbert_starts_as_its_last_layer_where_the_modules_match(
    minilm_path: Path, sentences: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ModernBERT's first layer has no attention norm, its others have one: the exit layer at depth 1 takes
    every other weight of the last layer, and the folder loads and runs it."""
    build_tiny_model(tmp_path / "modernbert", "modernbert", minilm_path, pooling="mean")
    monkeypatch.setattr(adapt_module, "LAYER_LEARNING_RATE", 0.0)
    adapt(tmp_path / "modernbert", sentences[:40], tmp_path / "out", layers=[1], exit_layers=[1], layer_epochs=1)
    adapted = Matryoshka2DEncoder(tmp_path / "out", num_layers=1)
    layer, last = adapted.loaded_model.exit_heads.layers[1].state_dict(), Matryoshka2DEncoder(tmp_path / "modernbert").loaded_model.layers[-1].state_dict()
    assert "attn_norm.weight" in last and "attn_norm.weight" not in layer
    assert layer.keys() < last.keys() and all(torch.equal(weight, last[name]) for name, weight in layer.items())
    assert np.isfinite(adapted.encode_documents(TEXTS)).all()


def test_the_exit_layer_or_the_head_whichever_keeps_the_teachers_rankings() -> None:
    """Compared on the same documents: the one whose held-out queries find the teacher's top 10 is kept;
    an exit layer asked for by depth is kept either way."""
    generator = torch.Generator().manual_seed(0)
    targets = torch.nn.functional.normalize(torch.randn(60, 16, generator=generator), dim=1)
    queries = torch.nn.functional.normalize(targets[:30] + 0.1 * torch.randn(30, 16, generator=generator), dim=1)
    held = torch.zeros(60, dtype=torch.bool)
    held[:30] = True
    exact = Rows(targets, targets, queries, queries, torch.arange(30), held)  # pooled states that are the teacher's vectors
    noise = replace(exact, documents=torch.randn(60, 16, generator=generator), queries=torch.randn(30, 16, generator=generator))
    identity = torch.nn.Identity()
    head = DepthResult("mlp", 0.1, {"ridge": 0.2, "mlp": 0.3}, agreements={"ridge": 0.4, "mlp": 0.5})
    won = _layer_or_head(noise, exact, identity, identity, identity, head)
    assert won.kind == "layer" and won.agreements["layer"] == 1.0 > won.agreements["mlp"] and set(won.tried) == {"layer", "mlp"}
    lost = _layer_or_head(exact, noise, identity, identity, identity, head)
    assert lost.kind == "mlp" and lost.agreement == 1.0 > lost.agreements["layer"] and lost.cosine == 0.3
    assert _layer_or_head(exact, noise, identity, identity, identity, head, choose=False).kind == "layer"
