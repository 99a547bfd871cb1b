"""`mm2d`: the command line. Flags are named as the encoder's options (`--num-layers`, `--dimensions`),
with the short aliases `--layers` and `--dims`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from mm2d_integrations import __version__
from mm2d_integrations.cli.adapt import add_adapt_command
from mm2d_integrations.cli.embed import add_embed_command
from mm2d_integrations.cli.eval import add_eval_command
from mm2d_integrations.cli.export import add_export_command
from mm2d_integrations.cli.rag import add_rag_commands
from mm2d_integrations.cli.serve import add_serve_command
from mm2d_integrations.retrieval.store_rules import ClusterUnavailable, IndexBusy, StoreUnavailable

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """Errors in one line (what is wrong, and where help is), exit status 2 as argparse's own."""

    def error(self, message: str) -> NoReturn:
        choices = [
            f"{action.dest}: one of {', '.join(action.choices)}"
            for action in self._actions
            if isinstance(action, argparse._SubParsersAction) and action.dest in message
        ]
        self.exit(2, f"{self.prog}: error: {message} ({'; '.join([*choices, f'see {self.prog} --help'])})\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mm2d", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mm2d {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_embed_command(commands)
    add_eval_command(commands)
    add_rag_commands(commands)
    add_adapt_command(commands)
    add_export_command(commands)
    add_serve_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done, 2 bad input (arguments, files, models), 1 a store that cannot be used now
    (damaged folder, server down, another run writing, a Ray cluster that does not answer), 130 interrupted."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (StoreUnavailable, IndexBusy, ClusterUnavailable) as error:
        print(f"mm2d: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError, ImportError) as error:
        print(f"mm2d: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mm2d: interrupted; nothing half-written is kept: run the same command again to complete the work", file=sys.stderr)
        return 130

