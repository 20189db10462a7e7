"""Windows with overlap: every token of a document is scored exactly once, with left context (docs/classifier.md).

One direction of the biLM reads the sequence u = [<|endoftext|>] + s, where s is the document in that direction's
order (the document itself for the forward LM, its reversal for the reversed LM); the leading eod is the document
separator the LMs saw before every document in training, and is never scored. A document longer than one window of
W positions is cut into windows of W positions that overlap by M (the context margin):

    window k reads u[a_k, min(a_k + W, m))   with a_k = k (W - M), m = len(u) = len(s) + 1
    window k scores u[1, W) for k = 0, u[a_k + M, min(a_k + W, m)) for k > 0

The scored ranges tile [1, m) without gaps or overlaps (a_k + M is where window k - 1 ends), and a position p scored
in window k has p - a_k >= min(p, M) positions of left context inside its window: all of its left context when
p < W, else at least M. Example, W = 8, M = 3, a document of 11 tokens (m = 12):

    u position   0 1 2 3 4 5 6 7 8 9 10 11
    window 0     r S S S S S S S                 reads [0, 8),  scores [1, 8)
    window 1               r r r S S S  S  S     reads [5, 12), scores [8, 12)   (r read as context, S scored)

Cost: a document of m positions reads m + (K - 1) M positions in K = 1 + ceil((m - W) / (W - M)) windows (m > W),
so long documents cost a factor of about W / (W - M) more than one pass (2x with M = W / 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    start: int  # u positions read: [start, end)
    end: int
    score_start: int  # u positions scored: [score_start, score_end)
    score_end: int


def check_window(window: int, context: int) -> None:
    if window < 2:
        raise ValueError(f"window must be >= 2 positions, got {window}")
    if not 0 <= context < window:
        raise ValueError(f"context must be in [0, window) = [0, {window}), got {context}")


def plan_windows(m: int, window: int, context: int) -> list[Window]:
    """Windows over a sequence of m positions (u, position 0 = the separator, never scored); see module doc."""
    check_window(window, context)
    if m <= 1:
        return []
    if m <= window:
        return [Window(0, m, 1, m)]
    stride = window - context
    out = [Window(0, window, 1, window)]
    a = stride
    while a + context < m:
        out.append(Window(a, min(a + window, m), a + context, min(a + window, m)))
        if a + window >= m:
            break
        a += stride
    return out


def num_windows(m: np.ndarray, window: int, context: int) -> np.ndarray:
    """K per sequence length m (vectorised plan_windows count): 0 for m <= 1, 1 for m <= W, else
    1 + ceil((m - W) / (W - M))."""
    check_window(window, context)
    m = np.asarray(m, dtype=np.int64)
    stride = window - context
    k = 1 + np.maximum(0, -(-(m - window) // stride))
    return np.where(m <= 1, 0, k)


def window_cost(m: np.ndarray, window: int, context: int) -> tuple[int, int]:
    """(positions read, sum of squared window lengths) over sequences of lengths m: sum of m + (K - 1) M, and
    sum of (K - 1) W^2 + (last window length)^2 (the causal attention cost is proportional to the latter)."""
    m = np.asarray(m, dtype=np.int64)
    k = num_windows(m, window, context)
    stride = window - context
    read = np.where(k > 0, m + np.maximum(k - 1, 0) * context, 0)
    last = np.where(k > 0, m - np.maximum(k - 1, 0) * stride, 0)
    sq = np.maximum(k - 1, 0) * window * window + last * last
    return int(read.sum()), int(sq.sum())
