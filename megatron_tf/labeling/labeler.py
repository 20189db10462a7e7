"""The interface every token labeler implements (blocklist here; the learned classifier and SAE labelers later)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class TokenLabeler(Protocol):
    """Scores tokens of whole documents.

    `score_documents(docs)` gets the token ids of a batch of documents (numpy int arrays, in dataset order) and
    returns one float32 array per document, same length, with forget scores in [0, 1]. It must be deterministic (a
    resumed annotation run re-labels only the missing chunks and must equal an uninterrupted run) and picklable
    (workers receive a copy). `describe()` is a JSON-serialisable dict that identifies the labeler and its
    parameters (it goes into the sidecar metadata and keys the resume manifest).

    Special tokens (`<|endoftext|>`, `<|hidden|>`, `<|pad|>`: `special_token_ids`) are never forget: the annotation
    runner sets their scores to 0 whatever the labeler returns (`zero_special_tokens`).
    """

    name: str

    def score_documents(self, docs: list[np.ndarray]) -> list[np.ndarray]: ...

    def describe(self) -> dict: ...


def check_scores(docs: list[np.ndarray], scores: list[np.ndarray], labeler_name: str) -> np.ndarray:
    """Validate a labeler's output for `docs` and return it concatenated as float32."""
    if len(scores) != len(docs):
        raise ValueError(f"labeler {labeler_name}: returned {len(scores)} score arrays for {len(docs)} documents")
    for k, (d, s) in enumerate(zip(docs, scores)):
        if np.shape(s) != (len(d),):
            raise ValueError(f"labeler {labeler_name}: document {k} of the batch has {len(d)} tokens, scores have "
                             f"shape {np.shape(s)}")
    flat = np.concatenate([np.asarray(s, dtype=np.float32) for s in scores]) if scores else np.zeros(0, np.float32)
    if flat.size and (not np.isfinite(flat).all() or flat.min() < 0 or flat.max() > 1):
        raise ValueError(f"labeler {labeler_name}: scores must be finite and in [0, 1], found range "
                         f"[{np.nanmin(flat)}, {np.nanmax(flat)}]")
    return flat


def special_token_ids(tokenizer) -> list[int]:
    """Ids that are never forget: the reserved `<|endoftext|>`, `<|hidden|>` and `<|pad|>` of the tokenizer."""
    return sorted({int(tokenizer.eod), int(tokenizer.hidden), int(tokenizer.pad)})


def zero_special_tokens(tokens: np.ndarray, scores: np.ndarray, special_ids) -> np.ndarray:
    """`scores` with 0 wherever `tokens` is a special id (a copy when anything changes)."""
    hit = np.isin(tokens, np.asarray(list(special_ids), dtype=np.int64))
    if hit.any():
        scores = np.where(hit, np.float32(0), scores).astype(scores.dtype, copy=False)
    return scores
