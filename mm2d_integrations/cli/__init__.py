"""`mm2d`: the command line. Flags are named as the encoder's options (`--num-layers`, `--dimensions`),
with the short aliases `--layers` and `--dims`."""

from __future__ import annotations

import argparse
import contextlib
import dis
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from mm2d_integrations import __version__
from mm2d_integrations.cli.adapt import add_adapt_command
from mm2d_integrations.cli.embed import add_embed_command
from mm2d_integrations.cli.eval import add_eval_command
from mm2d_integrations.cli.export import add_export_command
from mm2d_integrations.cli.rag import add_rag_commands
from mm2d_integrations.cli.serve import add_serve_command
from mm2d_integrations.core.folders import INTERRUPTED
from mm2d_integrations.serving.remote import RemoteEmbeddingError

DEBUG_VARIABLE = "MM2D_DEBUG"
ISSUES = "https://github.com/mm2d/mm2d-integrations/issues"
PACKAGE = Path(__file__).resolve().parents[1]
# Neither the input's fault nor the package's: a store, server, cluster or endpoint that cannot be used now
# (store_rules' StoreUnavailable, ClusterUnavailable and IndexBusy are OSErrors), a disk that is full.
UNAVAILABLE: tuple[type[BaseException], ...] = (OSError, RemoteEmbeddingError)
# The input's fault whoever raises them: a file that is missing or unreadable text, an extra not installed.
BAD_INPUT_ANYWHERE: tuple[type[BaseException], ...] = (FileNotFoundError, NotADirectoryError, IsADirectoryError, UnicodeError, ImportError)

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
    parser.add_argument(
        "--debug", action="store_true", help=f"print the traceback of an error (also: {DEBUG_VARIABLE}=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_embed_command(commands)
    add_eval_command(commands)
    add_rag_commands(commands)
    add_adapt_command(commands)
    add_export_command(commands)
    add_serve_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done; 2 bad input (arguments, files, models, a missing extra); 1 a store, server or
    cluster that cannot be used now (damaged folder, server down, another run writing), or a bug in this
    package, which says so; 130 interrupted. `--debug` (or MM2D_DEBUG=1) adds the traceback."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    debug = args.debug or os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")
    try:
        with _interrupts_recorded():
            status = run(args)
            if INTERRUPTED.is_set():  # an interrupt some library dropped: the run still stops as interrupted
                raise KeyboardInterrupt
        return status
    except KeyboardInterrupt:
        print("mm2d: interrupted; nothing half-written is kept: run the same command again to complete the work", file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            traceback.print_exc()
        if is_bad_input(error):
            print(f"mm2d: error: {error}", file=sys.stderr)
            return 2
        if isinstance(error, UNAVAILABLE):
            print(f"mm2d: error: {error}", file=sys.stderr)
            return 1
        print(
            f"mm2d: internal error: {type(error).__name__}: {error}\n"
            f"This is a bug in mm2d-integrations {__version__}, not in your input: please report it at {ISSUES} with "
            + ("the traceback above" if debug else f"the traceback that mm2d --debug (or {DEBUG_VARIABLE}=1) prints"),
            file=sys.stderr,
        )
        return 1


@contextlib.contextmanager
def _interrupts_recorded() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt as always, and is also recorded in `INTERRUPTED`, so that one raised
    where it is dropped (a finalizer, a broad except) still stops the run. Only where Python's own handler
    is in place, on the main thread (a server or a caller may have its own)."""
    INTERRUPTED.clear()
    own = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def record(number: int, frame: object) -> None:
        INTERRUPTED.set()
        raise KeyboardInterrupt

    if own:
        signal.signal(signal.SIGINT, record)
    try:
        yield
    finally:
        INTERRUPTED.clear()  # else a later run in this process (a library call, a test) would stop at once
        if own:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def is_bad_input(error: BaseException) -> bool:
    """Whether `error` is about the user's input: a missing file or extra (`BAD_INPUT_ANYWHERE`), or a
    ValueError or TypeError that this package raised on purpose (a `raise` statement of its own is where it
    began). One that began in an operation or a library call inside the package is a bug, not the input's fault."""
    if isinstance(error, BAD_INPUT_ANYWHERE):
        return True
    if not isinstance(error, (ValueError, TypeError)) or error.__traceback__ is None:
        return False
    innermost = error.__traceback__
    while innermost.tb_next is not None:
        innermost = innermost.tb_next
    code = innermost.tb_frame.f_code
    if not Path(code.co_filename).resolve().is_relative_to(PACKAGE):
        return False
    return any(
        instruction.offset == innermost.tb_lasti and instruction.opname in ("RAISE_VARARGS", "RERAISE") for instruction in dis.get_instructions(code)
    )
