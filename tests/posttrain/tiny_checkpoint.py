"""A tiny trained checkpoint with the demo SentencePiece tokenizer (8192 ids), for the post-training jobs (refusal,
RMU, attack sweep), which load checkpoints and read text corpora. About 2 s on 2 cores."""

from __future__ import annotations

import json
import lzma
import os
import warnings

import numpy as np

from megatron_tf.data.indexed_dataset import write_dataset
from megatron_tf.tokenizer.tokenizer import SentencePieceTokenizer
from megatron_tf.training import pretrain

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_SP = os.path.join(REPO, "data", "demo", "tokenizer", "demo_sp.model")
WORDS = ("the cell blood heart gene protein river mountain city music garden school market window story light "
         "water stone paper table").split()


def demo_tokenizer() -> SentencePieceTokenizer:
    return SentencePieceTokenizer(DEMO_SP, num_threads=1)


def texts(seed: int, n: int, words=WORDS, length: int = 30) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=length)) + "." for _ in range(n)]


def write_texts(path, records: list[str]) -> str:
    with lzma.open(path, "wt", encoding="utf-8") as f:
        for t in records:
            f.write(json.dumps({"text": t}) + "\n")
    return str(path)


def tiny_sp_checkpoint(tmp, name: str = "ckpt", iters: int = 4, extra: list[str] | None = None) -> str:
    """Pretrain a 2-layer, 32-wide GPT for `iters` steps on random word text; returns the --save directory."""
    tok = demo_tokenizer()
    docs = [np.asarray(tok.tokenize(t) + [tok.eod]) for t in texts(0, 200)]
    prefix = str(os.path.join(tmp, f"{name}_data"))
    write_dataset(prefix, docs, dtype=np.uint16)
    save = str(os.path.join(tmp, name))
    with warnings.catch_warnings():  # the dataset is written directly, without preprocessing's meta.json
        warnings.filterwarnings("ignore", message=".*meta.json not found")
        _pretrain(prefix, save, iters, extra)
    return save


def _pretrain(prefix: str, save: str, iters: int, extra: list[str] | None) -> None:
    pretrain(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--ffn-hidden-size", "64",
              "--seq-length", "64", "--micro-batch-size", "4", "--global-batch-size", "8", "--lr", "3e-3",
              "--min-lr", "3e-4", "--lr-warmup-iters", "1", "--tokenizer-type", "SentencePieceTokenizer",
              "--tokenizer-model", DEMO_SP, "--data-path", prefix, "--split", "100,0,0", "--num-workers", "0",
              "--log-interval", "1", "--eval-iters", "0", "--no-progress-bar", "--seed", "3", "--train-iters",
              str(iters), "--save", save, *(extra or [])])
