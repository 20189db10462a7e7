"""Synthetic datasets + forget sidecars for the GPT dataset tests (no real corpora in unit tests)."""

from __future__ import annotations

import numpy as np

from megatron_tf.data.indexed_dataset import write_dataset
from megatron_tf.data.sidecar import write_document_scores, write_token_mask, write_token_scores
from megatron_tf.tokenizer.tokenizer import NullTokenizer

VOCAB = 103  # NullTokenizer: ids 100, 101, 102 = <|endoftext|>, <|hidden|>, <|pad|>
EOD, HIDDEN, PAD = 100, 101, 102


def tokenizer() -> NullTokenizer:
    return NullTokenizer(VOCAB)


def random_docs(rng: np.random.Generator, n: int, max_len: int = 40, eod: bool = True) -> list[np.ndarray]:
    docs = []
    for _ in range(n):
        body = rng.integers(0, 100, int(rng.integers(1, max_len)))
        docs.append(np.append(body, EOD) if eod else body)
    return docs


def forget_pattern(rng: np.random.Generator, num_tokens: int) -> np.ndarray:
    """Scores in [0, 1] with runs of high scores (forget spans) among low ones."""
    q = rng.integers(0, 100, num_tokens).astype(np.uint8)
    pos = 0
    while pos < num_tokens:
        pos += int(rng.integers(1, 12))
        run = int(rng.integers(1, 6))
        q[pos : pos + run] = rng.integers(128, 256, len(q[pos : pos + run]))
        pos += run
    return q


def make_prefix(tmp_path, name: str, docs: list[np.ndarray], q: np.ndarray | None = None,
                mask_threshold: float | None = None, doc_scores: bool = False):
    prefix = str(tmp_path / name)
    ds = write_dataset(prefix, docs, dtype=np.uint16)
    if q is not None:
        write_token_scores(ds, q, {"labeler": "test"})
        if mask_threshold is not None:
            from megatron_tf.data.sidecar import quantize_threshold

            write_token_mask(ds, q >= quantize_threshold(mask_threshold), mask_threshold, {"labeler": "test"})
        if doc_scores:
            offs = ds.document_token_offsets()
            mean = np.array([q[a:b].mean() / 255.0 if b > a else 0.0 for a, b in zip(offs[:-1], offs[1:])])
            mx = np.array([q[a:b].max() / 255.0 if b > a else 0.0 for a, b in zip(offs[:-1], offs[1:])])
            frac = np.array([(q[a:b] >= 128).mean() if b > a else 0.0 for a, b in zip(offs[:-1], offs[1:])])
            write_document_scores(ds, np.stack([mean, mx, frac], 1), ["mean_score", "max_score", "frac_ge_0.50"],
                                  {"labeler": "test"})
    return prefix, ds
