"""`mm2d serve`: an HTTP embedding server that the mixedbread and openai SDKs can call (see `serve`)."""

from __future__ import annotations

import argparse
import os

from mm2d_integrations.cli.options import add_encoder_options, options_from
from mm2d_integrations.core.checkpoint import default_model

__all__ = ["add_serve_command"]

API_KEY_VARIABLE = "MM2D_API_KEY"


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("serve", help="serve embeddings over HTTP (mixedbread- and OpenAI-compatible /v1/embeddings)")
    add_encoder_options(parser)
    parser.add_argument("--served-model-name", default=None, help="the `model` requests name (default: the model's name or folder)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but loopback needs --api-key")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--api-key", default=os.environ.get(API_KEY_VARIABLE),
        help=f"clients must send Authorization: Bearer KEY (default: ${API_KEY_VARIABLE}, which keeps it out of the process list)",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-texts-per-request", type=int, default=256)
    limits.add_argument("--max-chars-per-text", type=int, default=32_768)
    limits.add_argument("--max-queue", type=int, default=256, help="requests waiting at most; more are answered 503")
    limits.add_argument("--max-batch-texts", type=int, default=256, help="texts encoded together at most")
    limits.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a batch waits for more requests")
    limits.add_argument("--max-body-bytes", type=int, default=None, help="bytes of a request body at most (default: what the text limits allow)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from mm2d_integrations.core.encoder import Matryoshka2DEncoder
    from mm2d_integrations.serving.server import ServerLimits, check_bind, serve

    check_bind(args.host, args.api_key)  # before the model loads
    limits = ServerLimits(
        args.max_texts_per_request, args.max_chars_per_text, args.max_queue, args.max_batch_texts, args.max_wait_ms,
        max_body_bytes=args.max_body_bytes,
    )
    encoder = Matryoshka2DEncoder(args.model or default_model(), options_from(args))
    print(f"mm2d: serving {encoder} as {args.served_model_name or encoder.model_name!r} on http://{args.host}:{args.port}/v1/embeddings", flush=True)
    serve(encoder, host=args.host, port=args.port, api_key=args.api_key, limits=limits, model_name=args.served_model_name)
    return 0
