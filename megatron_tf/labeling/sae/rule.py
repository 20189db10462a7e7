"""The paper's SAE labeling rule on one document's reference-LM tokens (pure numpy, no model).

Inputs: `acts` float [T, K], the activations of the K chosen domain latents on the T reference tokens of one
document (BOS positions already removed: they are never labeled and never neighbours), and `thresholds` float [K].

    seed[t]    = #{k : acts[t, k] > thresholds[k]} >= m                  (m = min_seed_latents, default 2)
    active[t]  = any_k acts[t, k] > 0
    forget     = the smallest superset of `seed` closed under: an active token with a forget neighbour is forget

The closure is computed in linear time from maximal runs of consecutive active tokens: a run is entirely forget when
it contains a seed or touches one (the token just before or just after the run is a seed); every seed is forget, and
nothing else is. Why this is the fixpoint of the iterative rule: (1) everything it marks is reached by the iteration
(a seed is forget from the start; an active run touching a forget seed is filled one token per step from that seed
outwards, each newly filled token being active with a forget neighbour); (2) the set it marks is closed (an inactive
non-seed token never becomes forget, so growth stays inside active runs, and a run not containing or touching a seed
has only inactive non-seed neighbours outside it, so none of its tokens ever gets a forget neighbour). Tested against
a brute-force loop on random inputs (tests/labeling/sae/test_rule.py).

Worked example (K = 2 latents, thresholds [1.0, 2.0], m = 2):

    t        0    1    2    3    4    5    6    7
    a[:,0]   0   .3   1.5  1.2   0    0   .2    0
    a[:,1]   0    0   2.5  0.1  .4    0    0   3.0
    over     0    0    2    1    0    0    0    1      (latents above their threshold)
    seed     .    .    S    .    .    .    .    .
    active   .    A    A    A    A    .    A    A
    forget   .    F    F    F    F    .    .    .      (run 1..4 holds seed 2; run 6..7 holds no seed)
"""

from __future__ import annotations

import numpy as np


def thresholds_from_moments(mean: np.ndarray, std: np.ndarray, k: float) -> np.ndarray:
    """Per-latent threshold mean + k * std (float64)."""
    return np.asarray(mean, np.float64) + float(k) * np.asarray(std, np.float64)


def seed_mask(acts: np.ndarray, thresholds: np.ndarray, min_seed_latents: int) -> np.ndarray:
    """bool [T]: at least `min_seed_latents` latents exceed (strictly) their thresholds."""
    acts = np.asarray(acts)
    if acts.ndim != 2 or acts.shape[1] != np.size(thresholds):
        raise ValueError(f"activations of shape {acts.shape} do not match {np.size(thresholds)} thresholds")
    if min_seed_latents < 1:
        raise ValueError(f"min_seed_latents must be >= 1, got {min_seed_latents}")
    over = acts.astype(np.float64, copy=False) > np.asarray(thresholds, dtype=np.float64)[None, :]  # in float64
    return np.count_nonzero(over, axis=1) >= min_seed_latents


def active_mask(acts: np.ndarray) -> np.ndarray:
    """bool [T]: at least one domain latent is active (> 0)."""
    acts = np.asarray(acts)
    return (acts > 0).any(axis=1) if acts.shape[1] else np.zeros(acts.shape[0], dtype=bool)


def expand(seed: np.ndarray, active: np.ndarray) -> np.ndarray:
    """bool [T]: the fixpoint of "an active token next to a forget token becomes forget", started from `seed`.

    Linear time: label maximal runs of active tokens (run id = cumulative count of run starts), mark a run when a
    token in it, or right before or after it, is a seed; forget = seed | (active & run marked).
    """
    seed = np.asarray(seed, dtype=bool)
    active = np.asarray(active, dtype=bool)
    if seed.shape != active.shape or seed.ndim != 1:
        raise ValueError(f"seed {seed.shape} and active {active.shape} must be equal 1-D shapes")
    n = seed.size
    if n == 0 or not seed.any():
        return seed.copy()
    starts = active & ~np.concatenate(([False], active[:-1]))
    run_id = np.cumsum(starts) - 1  # valid where active
    nruns = int(starts.sum())
    if nruns == 0:
        return seed.copy()
    # a seed touches the run of t if t itself, t-1 or t+1 is a seed
    touch = seed.copy()
    touch[1:] |= seed[:-1]
    touch[:-1] |= seed[1:]
    hit = np.zeros(nruns, dtype=bool)
    hit[run_id[active & touch]] = True
    out = seed.copy()
    out[active] |= hit[run_id[active]]
    return out


def label_tokens(acts: np.ndarray, thresholds: np.ndarray, min_seed_latents: int = 2) -> np.ndarray:
    """bool [T]: forget labels of one document's (non-BOS) reference tokens."""
    acts = np.asarray(acts)
    if acts.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    return expand(seed_mask(acts, thresholds, min_seed_latents), active_mask(acts))
