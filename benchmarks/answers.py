"""Does the extractive answer say it? The share of questions whose key fact is in the answer's first
sentence, on the sample corpus's questions and on held-out questions about the same documents
(docs/answers.md).

The sample corpus is indexed into a fresh Chroma folder; each question is asked through the pipeline
(`ask`, LangChain, k=3, the `ExtractiveAnswerer`). For each set it prints the share whose first
sentence states the fact, the share whose answer states it anywhere, and the share that cite the
answering document. The held-out set (tests/data/held_out_questions.jsonl) was written before the
answerer's sentence filter and is never used to tune it: print its misses only to report them.

Usage: python benchmarks/answers.py [--model MODEL] [--misses sample|held-out]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.evaluation.answers import FactQuestion, first_sentence, read_fact_questions, share_stating, states_fact
from mm2d_integrations.rag.pipeline import Store, ask, index
from mm2d_integrations.samples import SAMPLE_DOCS, SAMPLE_QUESTIONS

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
SETS = {
    "sample": lambda: read_fact_questions(SAMPLE_QUESTIONS, DATA / "sample_question_facts.jsonl"),
    "held-out": lambda: read_fact_questions(DATA / "held_out_questions.jsonl"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--misses", choices=SETS, default=None, help="also print each question of this set whose first sentence misses the fact")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mm2d-answers-") as folder:
        store = Store(persist_dir=folder, encoder=Matryoshka2DEncoder(args.model))
        index(SAMPLE_DOCS, store)
        print(f"model: {args.model}; LangChain chain, k=3")
        print(f"{'set':<9} {'questions':>9} {'first sentence':>14} {'anywhere':>8} {'source cited':>12}")
        for name, read in SETS.items():
            questions: list[FactQuestion] = read()
            answers = [ask(question.question, store) for question in questions]
            texts = [answer.text for answer in answers]
            anywhere = sum(states_fact(text, question.fact) for text, question in zip(texts, questions)) / len(questions)
            cited = sum(question.source in answer.sources for answer, question in zip(answers, questions)) / len(questions)
            print(f"{name:<9} {len(questions):>9} {share_stating(texts, questions):>14.3f} {anywhere:>8.3f} {cited:>12.3f}")
            if name == args.misses:
                for text, question in zip(texts, questions):
                    if not states_fact(first_sentence(text), question.fact):
                        print(f"  MISS {question.question} [{question.fact}]\n    {text.replace(chr(10), chr(10) + '    ')}")


if __name__ == "__main__":
    main()
