"""`mm2d export --layers L --dims D --out DIR`: a cut model as a folder that sentence-transformers, the
serving engines that read its folders, or ONNX Runtime load as is."""

from __future__ import annotations

import argparse
from pathlib import Path

from mm2d_integrations.cli.options import add_encoder_options, options_from
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.serving.export import EXPORT_PRECISIONS, FORMATS, export_model

__all__ = ["add_export_command"]

_OPTIONS = ("num_layers", "dimensions", "pooling", "normalize", "query_prompt", "document_prompt", "max_length",
            "revision", "trust_remote_code", "allow_pickle")


def add_export_command(commands: argparse._SubParsersAction) -> None:
    """Register `mm2d export` with the command line's subcommands."""
    parser = commands.add_parser("export", help="write a cut model (kept layers only) as a sentence-transformers folder or an ONNX graph")
    parser.add_argument("--out", type=Path, required=True, help="new folder to write (an existing non-empty one is refused)")
    parser.add_argument("--format", choices=FORMATS, default=FORMATS[0], help="folder format (default: sentence-transformers)")
    parser.add_argument(
        "--precision", choices=EXPORT_PRECISIONS, default=EXPORT_PRECISIONS[0], help="stored weights: float32 only (for int8, load the folder with --compute-precision int8; see docs/performance.md)"
    )
    add_encoder_options(parser, only=_OPTIONS)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    out = export_model(args.model or default_model(), args.out, options_from(args), format=args.format, precision=args.precision)
    print(f"wrote {out} ({args.format}, {args.precision})")
    return 0
