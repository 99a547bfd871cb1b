"""`mm2d`: the command line. Flags are named as the encoder's options (`--num-layers`, `--dimensions`),
with the short aliases `--layers` and `--dims`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from mm2d_integrations import __version__
from mm2d_integrations.cli.adapt import add_adapt_command
from mm2d_integrations.cli.embed import add_embed_command
from mm2d_integrations.cli.eval import add_eval_command
from mm2d_integrations.cli.rag import add_rag_commands

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm2d", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mm2d {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    add_embed_command(commands)
    add_eval_command(commands)
    add_rag_commands(commands)
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

