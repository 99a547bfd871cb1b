"""`mm2d adapt --corpus PATH --out DIR`: exit heads for every shallow depth, learned on your own text."""

from __future__ import annotations

import argparse
from pathlib import Path

from mm2d_integrations.cli.options import add_encoder_options, progress
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.training.adapt import (
    EPOCHS,
    EXIT_LAYER_STARTS,
    HEAD_SIDES,
    LAYER_EPOCHS,
    LOSSES,
    MAX_RANKED_DOCUMENTS,
    MAX_TEXTS,
    METHODS,
    PSEUDO_QUERIES,
    TEMPERATURE,
    TOP_K,
    AdaptReport,
    adapt,
    read_corpus,
)

__all__ = ["add_adapt_command", "format_adapt_report"]


def add_adapt_command(commands: argparse._SubParsersAction) -> None:
    """Register `mm2d adapt` with the command line's subcommands."""
    parser = commands.add_parser(
        "adapt", help="make a model truncatable in depth: learn exit heads on unlabeled text (no labels, CPU)"
    )
    parser.add_argument("--corpus", type=Path, required=True, help="a folder of documents, a .jsonl (BEIR corpus) or a file of one text a line")
    parser.add_argument("--out", type=Path, required=True, help="new folder for the adapted model (base files copied unchanged, plus the heads)")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="depths to adapt (default: every depth below full)")
    parser.add_argument(
        "--exit-layers", type=_depths, nargs="+", default=None, metavar="DEPTH",
        help="depths that get an exit layer, a retrained layer run instead of the last plus a linear head (default: one tried at the middle depth and kept "
        "where it ranks held-out text better than a head; 'none': heads only, about 2.5 times faster). On SciFact's 5,183 abstracts "
        "MiniLM keeps 93%% of full nDCG@10 at 3 of 6 layers with it, 74%% with a head; on a few hundred texts the head may win (docs/adapt.md)",
    )
    parser.add_argument(
        "--exit-layer-start", choices=EXIT_LAYER_STARTS, default="last",
        help="the weights an exit layer starts from: the model's last layer (default; keeps text unlike the corpus far better) "
        "or the layer it replaces (docs/adapt.md)",
    )
    parser.add_argument("--method", choices=METHODS, default="auto", help="head kind at the other depths; auto keeps the best on held-out text (default)")
    parser.add_argument(
        "--loss", choices=LOSSES, default="cosine",
        help="what trained heads learn: cosine to the teacher (default), plus its in-batch similarities or its listwise top-k "
        "ranking; auto tries cosine and similarity (slightly better rankings on some corpora, about 2.5 times the time)",
    )
    parser.add_argument("--sides", choices=HEAD_SIDES, default="shared", help="one head per depth (default), a query head and a document head, or auto")
    parser.add_argument(
        "--pseudo-queries", type=int, default=PSEUDO_QUERIES,
        help=f"queries cut from each text (a sentence or a span), ranked by the teacher (default {PSEUDO_QUERIES}; 0: fit the texts alone, faster)",
    )
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help=f"of the ranking losses' softmax (default {TEMPERATURE})")
    parser.add_argument("--top-k", type=int, default=TOP_K, help=f"teacher's nearest documents per query in the listwise loss (default {TOP_K})")
    parser.add_argument("--max-texts", type=int, default=MAX_TEXTS, help=f"sample at most this many texts (default {MAX_TEXTS})")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"training epochs of the lowrank and mlp heads (default {EPOCHS})")
    parser.add_argument("--layer-epochs", type=int, default=LAYER_EPOCHS, help=f"training epochs of the exit layers (default {LAYER_EPOCHS})")
    parser.add_argument("--mlp-hidden", type=int, default=None, help="hidden width of the mlp head (default 4 x the model's width)")
    parser.add_argument("--seed", type=int, default=0)
    add_encoder_options(parser, only=("batch_size", "device", "show_progress"))
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    texts = read_corpus(args.corpus)  # before loading the model, so that a bad corpus fails at once
    report = adapt(
        args.model or default_model(), texts, args.out, layers=args.layers, exit_layers=_exit_layers(args.exit_layers), method=args.method,
        loss=args.loss, sides=args.sides, pseudo_queries=args.pseudo_queries, temperature=args.temperature, top_k=args.top_k,
        max_texts=args.max_texts, epochs=args.epochs, layer_epochs=args.layer_epochs, exit_layer_start=args.exit_layer_start, mlp_hidden=args.mlp_hidden, seed=args.seed,
        batch_size=args.batch_size or 32, device=args.device, show_progress=progress(args),
    )
    print(format_adapt_report(report))
    return 0


def _depths(value: str) -> int | None:
    """A depth, or None for the word none."""
    if value.strip().lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a depth: {value!r} (a whole number, or none)") from None


def _exit_layers(values: list[int | None] | None) -> list[int] | None:
    """--exit-layers as adapt takes it: None (the default depth), [] for none, else the depths."""
    if values is None:
        return None
    if None in values and len(values) > 1:
        raise ValueError("--exit-layers takes depths or the word none, not both")
    return [value for value in values if value is not None]


def format_adapt_report(report: AdaptReport) -> str:
    """Per depth: the head kept, and on held-out texts the agreement with the teacher's top 10 (the
    choice) and the cosine to full depth, of the plain cut and of each head tried."""
    lines = [
        f"adapted {report.model} on {report.texts} texts and {report.pseudo_queries} pseudo-queries ({report.held_out} texts held out) "
        f"in {report.seconds:.1f} s (encoding {report.encode_seconds:.1f} s)",
        "on held-out texts: agreement with the teacher's top 10 documents (kept: the best), and mean cosine to full depth",
        "layers  head (query / document)  plain cut agree / cosine  with head agree / cosine  tried: agree / cosine",
    ]
    for depth, result in sorted(report.depths.items()):
        tried = ", ".join(f"{name} {result.agreements[name]:.3f} / {cosine:.3f}" for name, cosine in result.tried.items())
        lines.append(
            f"{depth:>6}  {result.chosen:<23}  {result.raw_agreement:>11.3f} / {result.raw_cosine:.3f}  "
            f"{result.agreement:>11.3f} / {result.cosine:.3f}  {tried}"
        )
    if any("layer" in result.tried for result in report.depths.values()):
        lines.append(
            f"where an exit layer was tried (layer), it and the best head rank the held-out texts and up to {MAX_RANKED_DOCUMENTS:,} documents "
            "(not the whole corpus: that would cost another pass through the layer); the better is kept, or the layer where --exit-layers asked for it"
        )
    lines.append(f"wrote {report.out}: use it as any model folder, e.g. mm2d eval sts FILE --model {report.out}")
    return "\n".join(lines)
