"""`mm2d embed A B`: embed two texts and print their cosine similarity."""

from __future__ import annotations

import argparse

import numpy as np

from mm2d_integrations.cli.options import add_encoder_options, options_from
from mm2d_integrations.encoder import Matryoshka2DEncoder
from mm2d_integrations.settings import default_model

__all__ = ["add_embed_command"]


def add_embed_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("embed", help="embed two texts and print their cosine similarity")
    parser.add_argument("text_a")
    parser.add_argument("text_b")
    add_encoder_options(parser)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    encoder = Matryoshka2DEncoder(args.model or default_model(), options_from(args))
    first, second = encoder.encode_documents([args.text_a, args.text_b])
    print(f"{encoder}\ncosine similarity: {float(np.dot(first, second)):.4f}")
    return 0
