"""What adopting a collection measures: the least cosine between vectors a collection stores (made
elsewhere, by LangChain's HuggingFaceEmbeddings over sentence-transformers) and the same texts embedded
again by this package, for the configuration that made them and for others of the same width.

    python benchmarks/adopt.py [N_TEXTS]

It prints one row per configuration: least and mean cosine over the sample `open_collection(adopt=True)`
takes (up to 32 documents spread over the collection), and whether adoption accepts it (>= 0.999).
"""

from __future__ import annotations

import sys
import tempfile

from mm2d_integrations.chroma import ADOPT_MIN_COSINE, chroma_client, stored_vector_cosines
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.core.encoder import Matryoshka2DEncoder
from mm2d_integrations.evaluation.datasets import read_sts

CONFIGURATIONS = {
    "same (float32)": {},
    "same, compute_precision=bf16": {"compute_precision": "bf16"},
    "same, compute_precision=int8": {"compute_precision": "int8"},
    "num_layers=5": {"num_layers": 5},
    "num_layers=3": {"num_layers": 3},
    "pooling=cls": {"pooling": "cls"},
    "query-style prompt on documents": {"document_prompt": "query: "},
}


def main(count: int = 200) -> None:
    from langchain_chroma import Chroma
    from langchain_huggingface import HuggingFaceEmbeddings

    pairs = read_sts("tests/data/graded_pairs.tsv")
    texts = list(dict.fromkeys(pairs.first + pairs.second))[:count]
    model = str(default_model())
    model_path = str(Matryoshka2DEncoder(model).source.location)
    with tempfile.TemporaryDirectory() as folder:
        client = chroma_client(folder)
        Chroma.from_texts(texts, HuggingFaceEmbeddings(model_name=model_path), client=client, collection_name="elsewhere")
        collection = client.get_collection("elsewhere", embedding_function=None)
        print(f"{collection.count()} texts embedded by HuggingFaceEmbeddings({model_path}); threshold {ADOPT_MIN_COSINE}")
        print(f"{'configuration':36} {'least cosine':>12} {'mean':>9}  adopted")
        for name, options in CONFIGURATIONS.items():
            cosines = stored_vector_cosines(collection, Matryoshka2DEncoder(model, **options))
            print(f"{name:36} {cosines.min():12.6f} {cosines.mean():9.6f}  {'yes' if cosines.min() >= ADOPT_MIN_COSINE else 'no'}")


if __name__ == "__main__":
    main(*(int(argument) for argument in sys.argv[1:]))
