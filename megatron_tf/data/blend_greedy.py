"""The greedy blending index of megatron-core (helpers.cpp build_blending_indices / build_exhaustive_blending_indices),
computed exactly (same float64 arithmetic, same tie rule).

The rule: at blend position s = 0, 1, ... pick the dataset i with the largest error e_i = fl(fl(w_i * max(s, 1)) - c_i)
(c_i = samples taken from i so far; the first i on ties), then c_i += 1.

How (measured on the 2-core development machine, 1M samples; docs/performance.md):
- a C loop (the rule above, sample by sample; data/native.py: compiled on first use with the system C compiler,
  `-ffp-contract=off` so no FMA changes a rounding, loaded with ctypes, no Python or torch headers). Same speed as
  megatron-core's C++ (same loop).
- without a C compiler, two datasets (the common blend) use an exact vectorised NumPy formulation
  (`two_dataset_positions`, 1.2-1.7x megatron-core's time: it needs ~5 passes over the output arrays where the loop
  needs one), and three or more datasets a Python loop (~0.15 us per sample and dataset; logged).
Three or more datasets have no per-dataset closed form: the pick depends on every dataset's count and the errors of
the waiting datasets grow at different rates (w_i), so their order changes over time; a fixed "key" order per
(dataset, count) and a Jacobi-style fixed point over all positions both disagree with the greedy on random weights.

Two datasets in NumPy: write m for the dataset with the smaller weight and M for the other; wins(s, k) = "m beats M
at position s when m has taken k samples (so M has taken s - k)", i.e. e_m(s, k) > e_M(s, s - k) (>= when m is
dataset 0, which wins ties). wins is monotone: non-increasing in k (float subtraction is monotone) and
non-decreasing in s (fl(w_m s) never decreases; fl(w_M s) - s never increases while fl(w_M (s + 1)) - fl(w_M s) <= 1,
which holds when 1 - w_M >= 4 float spacings at `size`; otherwise this path is not taken). So m's k-th sample is
taken at p_k = the first s with wins(s, k): between p_(k-1) and p_k it has taken k samples and loses (wins(p_k - 1, k)
is false, so every earlier s loses too), and at p_k it wins. p_k is guessed as ~k / w_m and proved per k by
evaluating wins(p_k - 1, k) (false) and wins(p_k, k) (true) with the same float64 operations as the C++; guesses
that fail move by one and are re-evaluated. Strictly increasing p_k completes the proof by induction over s.
"""

from __future__ import annotations

import math

import numpy as np

from .native import load_library

_CHUNK = 1 << 14  # positions per vectorised block (stays in L2)

def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def greedy_loop(weights: list[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The greedy rule sample by sample (native helper, or Python without a C compiler)."""
    w = np.ascontiguousarray(weights, dtype=np.float64)
    n = len(w)
    didx, sidx, counts = np.empty(size, np.int16), np.empty(size, np.int64), np.zeros(n, np.int64)
    lib = load_library()
    if lib is not None:
        lib.mtf_greedy_blend(_ptr(w), n, size, _ptr(didx), _ptr(sidx), _ptr(counts))
        return didx, sidx
    wl, c = w.tolist(), [0] * n
    picks, taken = [0] * size, [0] * size
    for s in range(size):
        sd = s if s > 1 else 1.0
        best, best_err = 0, wl[0] * sd - c[0]
        for i in range(1, n):
            e = wl[i] * sd - c[i]
            if e > best_err:
                best, best_err = i, e
        picks[s], taken[s] = best, c[best]
        c[best] += 1
    didx[:], sidx[:] = picks, taken
    return didx, sidx


def exhaustive_loop(sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Every sample of every dataset once, greedy with weights size_i / total over the datasets not yet used up."""
    sz = np.ascontiguousarray(sizes, dtype=np.int64)
    total, n = int(sz.sum()), len(sz)
    w = np.asarray([int(x) / float(total) for x in sizes], dtype=np.float64)
    didx, sidx, counts = np.empty(total, np.int16), np.empty(total, np.int64), np.zeros(n, np.int64)
    lib = load_library()
    if lib is not None:
        live, lw = np.empty(n, np.int32), np.empty(n, np.float64)
        lib.mtf_greedy_exhaustive(_ptr(w), _ptr(sz), n, total, _ptr(didx), _ptr(sidx), _ptr(counts), _ptr(live),
                                  _ptr(lw))
        return didx, sidx
    wl, c = w.tolist(), [0] * n
    live = [i for i in range(n) if sizes[i] > 0]
    for s in range(total):
        sd = s if s > 1 else 1.0
        best, best_err = -1, -math.inf
        for i in live:
            e = wl[i] * sd - c[i]
            if e > best_err:
                best, best_err = i, e
        didx[s], sidx[s] = best, c[best]
        c[best] += 1
        if c[best] == sizes[best]:
            live.remove(best)
    return didx, sidx


def two_dataset_positions(w0: float, w1: float, size: int) -> tuple[int, np.ndarray] | None:
    """(m, p): the dataset m with the smaller weight and the positions p (int64, increasing) where the greedy takes
    its samples among `size`; None when the monotonicity bound (module doc) does not hold."""
    m = 0 if w0 <= w1 else 1
    w_m, w_M = (w0, w1) if m == 0 else (w1, w0)
    if not (w_m > 0 and 1.0 - w_M >= 4 * np.spacing(float(size))):
        return None
    cmp = np.greater_equal if m == 0 else np.greater  # dataset 0 wins ties
    count = int(math.ceil(w_m * size)) + 3  # the greedy keeps |c_m - w_m s| <= 1: p_count >= size
    p = np.empty(count, dtype=np.float64)
    buf = np.empty((5, min(_CHUNK, count)))
    ok_buf = np.empty((2, buf.shape[1]), dtype=bool)
    retry = []
    for a in range(0, count, _CHUNK):
        b = min(count, a + _CHUNK)
        k, s, em, eM, t = (x[: b - a] for x in buf)
        lose_before, win_at = (x[: b - a] for x in ok_buf)
        k[:] = np.arange(a, b, dtype=np.float64)
        g = p[a:b]
        np.divide(k, w_m, out=g)  # the guess: first s with w_m s - k > w_M s - (s - k), i.e. s > k / w_m
        if m == 0:
            np.ceil(g, out=g)
        else:
            np.floor(g, out=g)
            g += 1.0
        for res, off in ((lose_before, -1.0), (win_at, 0.0)):
            np.add(g, off, out=t)
            np.maximum(t, 1.0, out=s)
            np.multiply(s, w_m, out=em)
            em -= k
            np.multiply(s, w_M, out=eM)
            np.subtract(t, k, out=s)
            eM -= s
            cmp(em, eM, out=res)
        lose_before &= g > 0  # there is no position -1
        np.logical_not(win_at, out=win_at)
        np.logical_or(lose_before, win_at, out=win_at)  # guess not proved
        if win_at.any():
            retry.append(np.flatnonzero(win_at) + a)
    if retry and not _fix_guesses(p, np.concatenate(retry), w_m, w_M, cmp):
        return None
    n = int(np.searchsorted(p, size))
    if n >= count or not (p[1:] > p[:-1]).all():
        return None
    return m, p[:n].astype(np.int64)


def _fix_guesses(p: np.ndarray, todo: np.ndarray, w_m: float, w_M: float, cmp) -> bool:
    """Move unproved guesses p[k] by one toward the first win until wins(p - 1, k) is false and wins(p, k) true."""
    for _ in range(8):
        k, g = todo.astype(np.float64), p[todo]

        def wins(s, k=k):
            sd = np.maximum(s, 1.0)
            return cmp(w_m * sd - k, w_M * sd - (s - k)) & (s >= 0)

        before, at = wins(g - 1), wins(g)
        p[todo] = g - before + ~(before | at)
        todo = todo[before | ~at]
        if todo.size == 0:
            return True
    return False


def two_dataset_indices(w0: float, w1: float, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(dataset_index, dataset_sample_index) of the greedy for two datasets, or None (use greedy_loop)."""
    found = two_dataset_positions(w0, w1, size)
    if found is None:
        return None
    m, pos = found
    didx = np.full(size, 1 - m, dtype=np.int16)
    didx[pos] = m
    other = np.flatnonzero(didx) if m == 0 else np.flatnonzero(didx == 0)
    sidx = np.empty(size, dtype=np.int64)
    sidx[pos] = np.arange(pos.size)
    sidx[other] = np.arange(other.size)
    return didx, sidx
