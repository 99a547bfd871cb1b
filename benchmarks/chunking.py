"""Characters or the model's tokens: how chunking changes retrieval and the extractive answers on the
sample corpus's 49 questions (docs/chunking.md).

For each chunking the sample corpus is indexed into a fresh Chroma folder; then, for each question,
hit@3 (the expected file among the sources of the 3 nearest chunks) and the extractive answer's
source accuracy (the expected file among the sources its answer cites).

Usage: python benchmarks/chunking.py [--model MODEL]
"""

from __future__ import annotations

import argparse
import tempfile

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.rag.pipeline import Store, ask, index
from mm2d_integrations.retrieval.documents import Chunking, load_folder
from mm2d_integrations.samples import SAMPLE_DOCS, load_questions


def measure(encoder: Matryoshka2DEncoder, chunking: Chunking) -> dict[str, float]:
    questions = load_questions()
    with tempfile.TemporaryDirectory(prefix="mm2d-chunking-") as folder:
        store = Store(persist_dir=folder, encoder=encoder)
        report = index(SAMPLE_DOCS, store, chunking=chunking)
        collection = store.client().get_collection(store.collection)
        vectors = encoder.encode_queries([question["question"] for question in questions])
        found = collection.query(query_embeddings=vectors.tolist(), n_results=3, include=["metadatas"])["metadatas"]
        hits = [question["source"] in {metadata["source"] for metadata in nearest} for question, nearest in zip(questions, found)]
        cited = [question["source"] in ask(question["question"], store).sources for question in questions]
    return {"chunks": report.chunks, "hit@3": sum(hits) / len(hits), "answer source": sum(cited) / len(cited)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_model())
    args = parser.parse_args()
    encoder = Matryoshka2DEncoder(args.model)
    tokens = Chunking.by_tokens(encoder)
    print(f"model: {args.model} (max_length {encoder.max_length}); {len(load_folder(SAMPLE_DOCS).documents)} documents, {len(load_questions())} questions")
    print(f"{'chunking':<34} {'chunks':>6} {'hit@3':>6} {'answer source':>13}")
    for name, chunking in ((f"characters: {Chunking().size}, overlap {Chunking().overlap}", Chunking()),
                           (f"tokens: {tokens.size}, overlap {tokens.overlap}", tokens)):
        result = measure(encoder, chunking)
        print(f"{name:<34} {result['chunks']:>6} {result['hit@3']:>6.3f} {result['answer source']:>13.3f}")


if __name__ == "__main__":
    main()
