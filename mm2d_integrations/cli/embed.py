"""`mm2d embed A B`: embed two texts and print their cosine similarity; with a query depth of its
own (`--query-layers`), A is the query and B the document."""

from __future__ import annotations

import argparse

import numpy as np

from mm2d_integrations.cli.options import add_encoder_options, options_from
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.core.encoder import Matryoshka2DEncoder

__all__ = ["add_embed_command"]


def add_embed_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "embed", help="embed two texts and print their cosine similarity (with --query-layers: A as the query, B as the document)"
    )
    parser.add_argument("text_a")
    parser.add_argument("text_b")
    add_encoder_options(parser)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    encoder = Matryoshka2DEncoder(args.model or default_model(), options_from(args))
    if encoder.query_num_layers == encoder.num_layers:
        first, second = encoder.encode_documents([args.text_a, args.text_b])
        compared = ""
    else:
        first, second = encoder.encode_queries([args.text_a])[0], encoder.encode_documents([args.text_b])[0]
        compared = f" (query A at {encoder.query_num_layers} layers, document B at {encoder.num_layers})"
    print(f"{encoder}\ncosine similarity{compared}: {float(np.dot(first, second)):.4f}")
    return 0
