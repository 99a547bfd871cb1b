"""`mm2d eval sts FILE` and `mm2d eval retrieval DIR`: every (layers, dimensions) cell on your data."""

from __future__ import annotations

import argparse
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from mm2d_integrations.cli.options import add_encoder_options, options_from, progress
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.core.encoder import Matryoshka2DEncoder
from mm2d_integrations.evaluation.datasets import read_beir, read_sts
from mm2d_integrations.evaluation.grid import GridResult, evaluate_retrieval, evaluate_sts
from mm2d_integrations.evaluation.report import format_report, save_heatmap, to_json
from mm2d_integrations.retrieval.funnel import Funnel

__all__ = ["add_eval_command"]

AUTO = "auto"  # --funnel auto


class Task(NamedTuple):
    """How one kind of data is read and scored."""

    read: Callable[[Path], Any]
    evaluate: Callable[..., GridResult]
    metavar: str
    data: str  # what the data is, for --help


TASKS = {
    "sts": Task(read_sts, evaluate_sts, "FILE", "STS Benchmark file (score, sentences: columns 5-7) or score<TAB>s1<TAB>s2"),
    "retrieval": Task(read_beir, evaluate_retrieval, "DIR", "BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv"),
}


def add_eval_command(commands: argparse._SubParsersAction) -> None:
    """Register `mm2d eval` and its tasks with the command line's subcommands."""
    evaluate = commands.add_parser("eval", help="score every (layers, dimensions) cell on your data, in one pass")
    tasks = evaluate.add_subparsers(dest="task", required=True)
    for name, task in TASKS.items():
        parser = tasks.add_parser(name, help=f"on a {task.data}")
        parser.add_argument("data", metavar=task.metavar, type=Path, help=task.data)
        add_encoder_options(parser, several=True, exclude=("query_num_layers",))  # --cross-depth measures it
        parser.add_argument("--json", type=Path, default=None, help="also write the grid here as JSON")
        parser.add_argument("--plot", type=Path, default=None, help="also draw the grid here as a heatmap (.png)")
        if name == "retrieval":
            parser.add_argument(
                "--funnel", action="append", default=[], metavar="DIMSxFACTOR",
                help="also measure funnel retrieval: shortlist 10 x FACTOR by the first DIMS dimensions, re-rank by "
                "the widest --dimensions (e.g. 64x10; repeatable); auto: find the narrowest DIMS, then the smallest FACTOR, "
                "that keep nDCG@10 within 1%% of all dimensions, and print the flags to index and ask with",
            )
            parser.add_argument(
                "--cross-depth", action="store_true",
                help="also score documents at the deepest --layers against queries at each shallower one (what "
                "--query-layers gives on a collection indexed at full depth; meaningful for a model from mm2d adapt)",
            )
        parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    task = TASKS[args.task]
    _check_before_encoding(args)
    given = getattr(args, "funnel", [])
    funnels = [Funnel.parse(text) for text in given if text != AUTO]
    data = task.read(args.data)  # before loading the model, so that a bad file fails at once
    options = options_from(args, num_layers=max(args.num_layers) if args.num_layers else None, dimensions=None)
    encoder = Matryoshka2DEncoder(args.model or default_model(), options)
    extra: dict[str, Any] = {"funnels": funnels} if funnels else {}
    if getattr(args, "cross_depth", False):
        extra["cross_depth"] = True
    if AUTO in given:
        extra["auto_funnel"] = True
    result = task.evaluate(encoder, data, args.num_layers, args.dimensions, show_progress=progress(args), **extra)
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(to_json(result), indent=2) + "\n", encoding="utf-8")
        print(f"wrote the grid as JSON to {args.json}")
    if args.plot:
        save_heatmap(result, args.plot)
        print(f"wrote the heatmap to {args.plot}")
    return 0


def _check_before_encoding(args: argparse.Namespace) -> None:
    """Fail before the long encoding pass, not after it, when a result could not be scored or written."""
    needed = (["scipy"] if args.task == "sts" else []) + (["matplotlib"] if args.plot else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"mm2d eval {args.task} needs {' and '.join(missing)}: pip install 'mm2d-integrations[eval]'")
    if getattr(args, "cross_depth", False) and args.num_layers and len(set(args.num_layers)) < 2:
        raise ValueError("--cross-depth needs a --layers depth below the deepest one, the documents' (e.g. --layers 6 3 1)")
    if args.plot and args.plot.suffix.lower() != ".png":
        raise ValueError(f"--plot must name a .png file, got {str(args.plot)!r}")
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path and not path.parent.is_dir():
            raise FileNotFoundError(f"{option}: folder {str(path.parent)!r} does not exist")
