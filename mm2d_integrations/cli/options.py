"""Command-line flags derived from `EncoderOptions`: `--num-layers` (alias `--layers`), `--dimensions`
(alias `--dims`), and one flag per other option, named as the option is."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection

from mm2d_integrations.core.options import EncoderOptions, option_specs

__all__ = ["add_encoder_options", "options_from", "progress"]

LIST_VALUED = ("num_layers", "dimensions")


def add_encoder_options(
    parser: argparse.ArgumentParser, *, several: bool = False, only: Collection[str] | None = None, exclude: Collection[str] = ()
) -> None:
    """`--model` and the encoder options (all, or those named in `only`, less those in `exclude`). With
    `several`, num_layers and dimensions take lists (the evaluation grid's axes)."""
    parser.add_argument("--model", default=None, help="hub id or folder (default: the packaged all-MiniLM-L6-v2)")
    group = parser.add_argument_group("encoder options")
    for spec in option_specs():
        if (only is not None and spec.name not in only) or spec.name in exclude:
            continue
        if spec.kind is bool:
            group.add_argument(*spec.flags, dest=spec.name, default=None, action=argparse.BooleanOptionalAction, help=spec.help)
            continue
        listed = several and spec.name in LIST_VALUED
        group.add_argument(
            *spec.flags, dest=spec.name, default=None, type=spec.kind, nargs="+" if listed else None,
            metavar=spec.name.upper(), help=spec.help + (" (a list)" if listed else ""),
        )


def options_from(args: argparse.Namespace, **overrides: object) -> EncoderOptions:
    """The options given on the command line (the others keep their defaults), then `overrides`."""
    given = {spec.name: getattr(args, spec.name) for spec in option_specs() if getattr(args, spec.name, None) is not None}
    return EncoderOptions.of(**{**given, **overrides})


def progress(args: argparse.Namespace) -> bool:
    """Bars over long work (indexing, encoding a data set): as `--verbose`/`--no-verbose` say, else on a
    terminal only. Model loading shows its bar only on `--verbose`."""
    return args.show_progress if args.show_progress is not None else sys.stderr.isatty()
