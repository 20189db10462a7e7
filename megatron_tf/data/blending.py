"""Blending several GPT datasets by weight, with megatron-core's arithmetic (blended_megatron_dataset_builder.py,
blended_dataset.py, helpers.cpp build_blending_indices), so the same blend gives the same sample order.

- weights are normalised: w_i / sum(w).
- each component dataset is built with ceil(ceil(size * w_i) * (1 + surplus)) samples (surplus 0.005 by default:
  a 0.5% margin so the blend never runs past a component), and the blend has sum_i ceil(size * w_i) samples.
- blending index (greedy, error-minimising): for blend position s = 0, 1, ..., pick the dataset i with the largest
  w_i * max(s, 1) - c_i (first one on ties; c_i = samples taken so far from i, all in float64 as the C++ does);
  dataset_index[s] = i, dataset_sample_index[s] = c_i, then c_i += 1.
- weights None (blend by size): each component is one epoch; with a requested size the blend has
  min(size, sum of lengths) samples with weights = lengths; without one, the exhaustive variant takes every sample
  of every component exactly once (same greedy over the datasets not yet used up, weights = len_i / total).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..utils.logging import get_logger
from .blend_greedy import exhaustive_loop, greedy_loop, two_dataset_indices
from .index_cache import load_or_build
from .native import load_library

log = get_logger(__name__)


def normalize(weights) -> list[float]:
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0 or (w <= 0).any() or not np.isfinite(w).all():
        raise ValueError(f"blend weights must be finite and > 0, got {list(weights)}")
    return (w / w.sum()).tolist()


def filtered_weights(weights: list[float], tokens_before: list[int], tokens_kept: list[int]) -> list[float]:
    """Blend weights after a filter that removes data: w_i * kept_i / before_i, renormalised (the given weights are
    shares of the unfiltered data). A component's epochs (samples x seq_length / kept_i) then keep their ratios to
    the other components' epochs, so filtering never repeats a component's surviving documents to refill its share.
    Components with nothing removed keep w_i exactly (kept_i / before_i == 1.0), so an unfiltered blend is unchanged
    bit for bit."""
    out = []
    for w, b, k in zip(weights, tokens_before, tokens_kept):
        if k > b or k < 0:
            raise ValueError(f"tokens kept {k} outside [0, {b}]")
        out.append(float(w) if k == b else float(w) * (k / b))
    return normalize(out)


def parse_blend(items: list[str] | None) -> tuple[list[str], list[float] | None] | None:
    """Megatron's --data-path list: 'P' / 'P1 P2 ...' (weights None) or 'W1 P1 W2 P2 ...'."""
    if not items:
        return None
    if len(items) % 2 == 0:
        try:
            weights = [float(items[i]) for i in range(0, len(items), 2)]
        except ValueError:
            weights = None
        if weights is not None:
            return [p.strip() for p in items[1::2]], weights
    return [p.strip() for p in items], None


def component_sizes(weights: list[float], size: int, surplus: float = 0.0) -> list[int]:
    """Samples to request per component: ceil(ceil(size * w) * (1 + surplus))."""
    return [int(math.ceil(math.ceil(size * w) * (1 + surplus))) for w in weights]


def build_blending_indices(weights: list[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset_index int16 [size], dataset_sample_index int64 [size]) by the greedy rule (module doc), equal to
    megatron-core's helpers.build_blending_indices. Computed by blend_greedy.py's compiled loop, or without a C
    compiler by its exact NumPy formulation for two datasets (a Python loop for more)."""
    w = [float(x) for x in weights]
    if len(w) == 1:
        return np.zeros(size, dtype=np.int16), np.arange(size, dtype=np.int64)
    if len(w) == 2 and load_library() is None:
        found = two_dataset_indices(w[0], w[1], size)
        if found is not None:
            return found
    return greedy_loop(w, size)


def build_exhaustive_blending_indices(sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Every sample of every component exactly once, interleaved by the greedy rule with weights len_i / total over
    the components not yet used up (components of length 0 are never picked); equal to megatron-core's
    helpers.build_exhaustive_blending_indices when no length is 0."""
    sizes = [int(x) for x in sizes]
    live = [i for i, n in enumerate(sizes) if n > 0]
    total = sum(sizes)
    if len(live) == 1:
        return np.full(total, live[0], dtype=np.int16), np.arange(total, dtype=np.int64)
    if len(live) == 2 and load_library() is None:
        found = _two_exhaustive(sizes, live, total)
        if found is not None:
            return found
    return exhaustive_loop(sizes)


def _two_exhaustive(sizes: list[int], live: list[int], total: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Two live components: the weighted greedy until one is used up (at position t), then the other one alone."""
    n = [sizes[i] for i in live]
    found = two_dataset_indices(n[0] / float(total), n[1] / float(total), total)
    if found is None:
        return None
    didx, sidx = found
    ends = [np.flatnonzero((didx == j) & (sidx == n[j] - 1)) for j in (0, 1)]  # where each one is used up
    t = min(int(e[0]) for e in ends if e.size)
    rest = 1 - int(didx[t])
    taken = int(np.count_nonzero(didx[: t + 1] == rest))
    didx[t + 1 :] = rest
    sidx[t + 1 :] = np.arange(taken, taken + total - t - 1)
    if live != [0, 1]:
        didx = np.asarray(live, dtype=np.int16)[didx]
    return didx, sidx


class BlendedDataset(torch.utils.data.Dataset):
    """Blend of GPT datasets: `ds[s]` = datasets[dataset_index[s]].get(dataset_sample_index[s], consumed_index=s),
    plus key `dataset_id`. weights None: exhaustive blend of the datasets' full lengths."""

    def __init__(self, datasets: list, weights: list[float] | None, size: int | None, cache_dir: str | None = None):
        if len(datasets) >= 32767:
            raise ValueError(f"at most 32766 datasets can be blended, got {len(datasets)}")
        self.datasets = datasets
        self.size = size
        if weights is None:
            lengths = [len(d) for d in datasets]
            if size is None:
                self.weights = lengths
            else:
                self.weights = normalize(lengths)
                self.size = min(size, sum(lengths))
        else:
            self.weights = normalize(weights)
        desc = {"version": "megatron_tf-blend-v1", "datasets": [d.description for d in datasets],
                "weights": self.weights, "size": self.size}
        self.description = desc
        t0 = time.perf_counter()
        if self.size is None:
            build = lambda: dict(zip(("dataset_index", "dataset_sample_index"),
                                     build_exhaustive_blending_indices(self.weights)))
        else:
            build = lambda: dict(zip(("dataset_index", "dataset_sample_index"),
                                     build_blending_indices(self.weights, self.size)))
        arrays, hit = load_or_build(cache_dir, "blend", desc, ("dataset_index", "dataset_sample_index"), build,
                                    background=True)
        self.dataset_index = arrays["dataset_index"]
        self.dataset_sample_index = arrays["dataset_sample_index"]
        counts = np.bincount(np.asarray(self.dataset_index), minlength=len(datasets))
        for i, (c, d) in enumerate(zip(counts, datasets)):
            if c > len(d):
                raise IndexError(f"the blend takes {c} samples from dataset {i} ({d.source.prefix}) which has only "
                                 f"{len(d)}; raise --mid-level-dataset-surplus")
        log.info("blend of %d datasets %s in %.3f s: %d samples, taken %s for weights %s", len(datasets),
                 "loaded" if hit else "built", time.perf_counter() - t0, len(self), counts.tolist(),
                 [round(float(x), 4) for x in self.weights])

    def __len__(self) -> int:
        return int(self.dataset_index.shape[0])

    def get(self, idx: int, consumed_index: int | None = None) -> dict[str, np.ndarray]:
        d = int(self.dataset_index[idx])
        sample = self.datasets[d].get(int(self.dataset_sample_index[idx]), consumed_index)
        sample["dataset_id"] = np.int64(d)
        return sample

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        return self.get(int(idx), int(idx))
