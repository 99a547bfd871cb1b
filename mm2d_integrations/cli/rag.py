"""`mm2d index`, `mm2d ask` and `mm2d demo`: the RAG sample from the command line."""

from __future__ import annotations

import argparse
import tempfile
from typing import TYPE_CHECKING, Any

from mm2d_integrations.cli.options import add_encoder_options, options_from, progress
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.core.encoder import Matryoshka2DEncoder
from mm2d_integrations.rag import FRAMEWORKS
from mm2d_integrations.rag.generators import EXTRACTIVE
from mm2d_integrations.retrieval.funnel import Funnel
from mm2d_integrations.retrieval.store_rules import DEFAULT_COLLECTION, DEFAULT_PERSIST_DIR, MissingIndex
from mm2d_integrations.samples import SAMPLE_DOCS, load_questions

if TYPE_CHECKING:
    from mm2d_integrations.rag.pipeline import Store

__all__ = ["add_rag_commands"]

DEMO_QUESTIONS = 4


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    add_encoder_options(parser)
    parser.add_argument("--collection", default=DEFAULT_COLLECTION, help=f"Chroma collection (default {DEFAULT_COLLECTION})")
    parser.add_argument("--persist-dir", default=None, help=f"embedded Chroma folder (default {DEFAULT_PERSIST_DIR})")
    parser.add_argument("--chroma-host", default=None, help="a Chroma server (chroma run) instead of the folder")
    parser.add_argument("--chroma-port", type=int, default=None)


def _add_answer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--framework", choices=FRAMEWORKS, default="langchain")
    parser.add_argument(
        "--generator", default=EXTRACTIVE,
        help="extractive (offline, default) or a causal language model's hub id or folder, run by the framework's own class "
        "(LangChain HuggingFacePipeline, LlamaIndex HuggingFaceLLM; pip install 'mm2d-integrations[llm]')",
    )
    parser.add_argument("-k", type=int, default=3, help="chunks to retrieve (default 3)")
    parser.add_argument(
        "--funnel", default=None, metavar="DIMSxFACTOR",
        help="funnel retrieval: shortlist k x FACTOR chunks by the first DIMS dimensions, rank them by all "
        "(e.g. 64x10; index with --shortlist-dims DIMS first)",
    )


def _store(args: argparse.Namespace, **overrides: Any) -> Store:
    from mm2d_integrations.rag.pipeline import Store  # the chroma and rag extras: only these commands need them

    values = dict(
        collection=args.collection, persist_dir=args.persist_dir, host=args.chroma_host, port=args.chroma_port,
        model=args.model, options=options_from(args),
    )
    return Store(**{**values, **overrides})


def _index(args: argparse.Namespace) -> int:
    if args.ray_actors is not None and args.ray is None:
        raise ValueError("--ray-actors counts the actors of --ray: give --ray too")
    store = _store(args, shortlist_dims=args.shortlist_dims, adopt=args.adopt)
    if args.ray is not None:
        from mm2d_integrations.rag.ray_indexer import index_on_ray  # the ray extra

        gpus = 1 if (store.options.device or "").startswith("cuda") else None  # --device cuda: each actor reserves a GPU
        print(index_on_ray(args.folder, store, address=args.ray, actors=args.ray_actors, num_gpus=gpus, show_progress=progress(args)))
        return 0
    from mm2d_integrations.rag.pipeline import index

    print(index(args.folder, store, show_progress=progress(args)))
    return 0


def _ask(args: argparse.Namespace) -> int:
    from mm2d_integrations.rag.pipeline import ask

    store = _store(args)
    try:
        answer = ask(args.question, store, framework=args.framework, generator=args.generator, k=args.k, funnel=args.funnel)
    except MissingIndex as error:
        shortlist = f" --shortlist-dims {Funnel.parse(args.funnel).shortlist_dims}" if args.funnel else ""
        raise MissingIndex(f"{error}: run mm2d index DIR{shortlist} first") from None
    print(answer)
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Index the sample corpus and answer a few sample questions, offline, with one loaded model."""
    from mm2d_integrations.rag.pipeline import ask, index

    folder, questions = SAMPLE_DOCS, load_questions()
    funnel = Funnel.parse(args.funnel) if args.funnel else None
    with tempfile.TemporaryDirectory(prefix="mm2d-demo-") as scratch:
        encoder = Matryoshka2DEncoder(args.model or default_model(), options_from(args))
        store = _store(args, persist_dir=args.persist_dir or scratch, shortlist_dims=funnel and funnel.shortlist_dims, encoder=encoder)
        print(f"indexing {folder} ...\n{index(folder, store, show_progress=progress(args))}\n")
        for question in questions[:: max(1, len(questions) // DEMO_QUESTIONS)][:DEMO_QUESTIONS]:
            print(f"Q: {question['question']}")
            print(ask(question["question"], store, framework=args.framework, generator=args.generator, k=args.k, funnel=funnel))
            print()
    return 0


def add_rag_commands(commands: Any) -> None:
    index_parser = commands.add_parser("index", help="index a folder of documents into Chroma (incremental)")
    index_parser.add_argument("folder")
    _add_store_options(index_parser)
    index_parser.add_argument(
        "--shortlist-dims", type=int, default=None, metavar="DIMS",
        help="also keep each vector's first DIMS dimensions in COLLECTION-shortDIMS (and, in a folder, the full vectors as "
        "float16 rows beside it), for mm2d ask --funnel DIMSxFACTOR. To pick DIMS and FACTOR, run mm2d eval retrieval "
        "YOUR_SET --funnel auto: it prints the narrowest that keep nDCG@10 within 1%% (docs/funnel.md)",
    )
    index_parser.add_argument(
        "--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
        help="read, chunk and embed on a Ray cluster, writing to the store as vectors arrive: alone, a cluster started "
        "here for the run; auto (ray start), HOST:PORT or ray://HOST:10001 to join one (pip install 'mm2d-integrations[ray]')",
    )
    index_parser.add_argument(
        "--adopt", action="store_true",
        help="take over a collection built elsewhere (plain Chroma, langchain_chroma): up to 32 of its documents are embedded "
        "again and must match their stored vectors (cosine >= 0.999); its own records are kept",
    )
    index_parser.add_argument("--ray-actors", type=int, default=None, metavar="N", help="embedding actors with --ray (default: one per CPU)")
    index_parser.set_defaults(run=_index)

    ask_parser = commands.add_parser("ask", help="answer a question from the indexed documents, with sources")
    ask_parser.add_argument("question")
    _add_store_options(ask_parser)
    _add_answer_options(ask_parser)
    ask_parser.set_defaults(run=_ask)

    demo = commands.add_parser("demo", help="index the sample corpus and answer sample questions, offline")
    _add_store_options(demo)
    _add_answer_options(demo)
    demo.set_defaults(run=_demo)
