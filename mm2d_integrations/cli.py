"""`mm2d`: the command line. `--layers` is the encoder's `num_layers`, `--dims` its `dimensions`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import numpy as np

from mm2d_integrations.encoder import Matryoshka2DEncoder
from mm2d_integrations.loading import default_model


def add_model_options(parser: argparse.ArgumentParser, *, several: bool = False) -> None:
    """The options that choose the model and how deep and wide it is cut."""
    parser.add_argument("--model", default=None, help="hub id or folder (default: the packaged all-MiniLM-L6-v2)")
    depth_help = "transformer layers to keep" + (" (a list; default every depth)" if several else "")
    dims_help = "dimensions to keep" + (" (a list; default native, then powers of two down to 32)" if several else "")
    nargs = "+" if several else None
    parser.add_argument("--layers", type=int, nargs=nargs, default=None, help=depth_help)
    parser.add_argument("--dims", type=int, nargs=nargs, default=None, help=dims_help)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")


def encoder_from(args: argparse.Namespace, **overrides: object) -> Matryoshka2DEncoder:
    options = dict(
        num_layers=args.layers,
        dimensions=args.dims,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
    )
    options.update(overrides)
    return Matryoshka2DEncoder(args.model or default_model(), **options)  # type: ignore[arg-type]


def _embed(args: argparse.Namespace) -> int:
    encoder = encoder_from(args)
    first, second = encoder.encode_documents([args.text_a, args.text_b])
    print(f"{encoder}\ncosine similarity: {float(np.dot(first, second)):.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm2d", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    embed = commands.add_parser("embed", help="embed two texts and print their cosine similarity")
    embed.add_argument("text_a")
    embed.add_argument("text_b")
    add_model_options(embed)
    embed.set_defaults(run=_embed)
    from mm2d_integrations.evaluation.command import add_eval_command  # imported here: it builds on this module

    add_eval_command(commands)
    from mm2d_integrations.rag.command import add_rag_commands

    add_rag_commands(commands)
    from mm2d_integrations.adapt_command import add_adapt_command

    add_adapt_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as error:
        print(f"mm2d: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
