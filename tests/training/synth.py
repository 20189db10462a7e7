"""Tiny datasets and flags for the trainer tests (NullTokenizer, vocab 103 -> padded 128 for TP 1 and 2)."""

from __future__ import annotations

import numpy as np

from tests.data.gpt_synth import EOD, HIDDEN, forget_pattern, make_prefix, random_docs

VOCAB = 103
__all__ = ["VOCAB", "EOD", "HIDDEN", "make_data", "tiny_args"]


def make_data(tmp_path, name: str = "syn", n_docs: int = 300, seed: int = 0) -> str:
    """A dataset with forget sidecars (token scores, bit mask at 0.5, document scores); returns the prefix."""
    rng = np.random.default_rng(seed)
    docs = random_docs(rng, n_docs, max_len=60)
    q = forget_pattern(rng, sum(len(d) for d in docs))
    prefix, _ = make_prefix(tmp_path, name, docs, q, mask_threshold=0.5, doc_scores=True)
    return prefix


def tiny_args(prefix: str, *, iters: int = 4, mbs: int = 2, gbs: int = 8, extra: list[str] | None = None) -> list[str]:
    """Flags of a 2-layer, 32-wide GPT on `prefix` (vocab padded to 128 for TP 1 and 2)."""
    args = [
        "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--ffn-hidden-size", "64",
        "--seq-length", "16", "--micro-batch-size", str(mbs), "--global-batch-size", str(gbs),
        "--lr", "3e-3", "--min-lr", "3e-4", "--lr-warmup-iters", "1", "--clip-grad", "0.5",
        "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB), "--make-vocab-size-divisible-by", "64",
        "--data-path", prefix, "--split", "90,10,0", "--num-workers", "0", "--log-interval", "1",
        "--eval-interval", "1000", "--eval-iters", "1", "--no-progress-bar", "--init-method-std", "0.05",
        "--seed", "7",
    ]
    if iters:
        args += ["--train-iters", str(iters)]
    return args + list(extra or [])


def two_checkpoint_run(tmp) -> tuple[str, str]:
    """(data prefix, save dir) of a tiny run with checkpoints at iterations 1 and 2 (checkpoint integrity and
    tools/verify tests)."""
    from megatron_tf.training import pretrain

    prefix = make_data(tmp)
    save = str(tmp / "run")
    pretrain(tiny_args(prefix, iters=2, extra=["--save", save, "--save-interval", "1", "--eval-iters", "0"]))
    return prefix, save
