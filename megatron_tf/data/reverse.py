"""Reversed documents, for training the right-to-left half of a biLM (`--reverse-documents`; docs/classifier.md).

A document is its content tokens c_0 .. c_{C-1}, optionally followed by one <|endoftext|> (preprocessing with
--append-eod puts it there). Its reversal keeps the end-of-document token at the end:

    document   c_0 c_1 ... c_{C-1} <eod>          reversed   c_{C-1} ... c_1 c_0 <eod>
    document   c_0 c_1 ... c_{C-1}  (no eod)      reversed   c_{C-1} ... c_1 c_0

so a reversed stream is built exactly like a forward one (documents separated by <|endoftext|>), the reversed LM
learns p(c_t | c_{t+1} ..) with the same document separator, and `--eod-mask-loss` / `--reset-position-ids` keep
their meaning. Only a trailing eod is kept in place; an eod inside the content (not produced by preprocessing) is
reversed like any other token. The reversal is a permutation `perm` of the document's positions (reversed =
doc[perm]); it is an involution (perm[perm] = identity), so `perm` also maps a token's forward position to its
reversed position.

`reversed_ranges` maps a piece [lo, hi) of a reversed document (what the GPT dataset's sample index addresses) to
ranges of the stored (forward) document, each read forward or backward.
"""

from __future__ import annotations

import numpy as np


def content_length(length: int, last_token: int | None, eod: int) -> int:
    """C: the document's tokens minus its trailing eod (if the last token is eod)."""
    return length - 1 if length > 0 and last_token is not None and int(last_token) == int(eod) else length


def reversal_permutation(doc: np.ndarray, eod: int) -> np.ndarray:
    """int64 perm with reverse_document(doc) == doc[perm]; an involution."""
    n = len(doc)
    c = content_length(n, doc[-1] if n else None, eod)
    perm = np.arange(n, dtype=np.int64)
    perm[:c] = perm[:c][::-1]
    return perm


def reverse_document(doc: np.ndarray, eod: int) -> np.ndarray:
    """The document with its content reversed and a trailing eod kept last (module docstring)."""
    doc = np.asarray(doc)
    return doc[reversal_permutation(doc, eod)]


def reversed_ranges(start: int, length: int, content: int, lo: int, hi: int) -> list[tuple[int, int, bool]]:
    """Stored ranges holding positions [lo, hi) of the reversed document stored at global tokens [start,
    start + length) with `content` content tokens: [(a, b, backward), ...] in reading order; read tokens [a, b) and
    flip them when `backward`.

    Reversed position k < content is stored position content - 1 - k; position k >= content (the eod) is k itself.
    """
    if not 0 <= lo <= hi <= length:
        raise ValueError(f"piece [{lo}, {hi}) outside a document of {length} tokens")
    out = []
    c_hi = min(hi, content)
    if lo < c_hi:
        out.append((start + content - c_hi, start + content - lo, True))
    e_lo = max(lo, content)
    if e_lo < hi:
        out.append((start + e_lo, start + hi, False))
    return out
