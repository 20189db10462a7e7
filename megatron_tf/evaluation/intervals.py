"""Bootstrap replicates of evaluation losses, for the scaling report's 95% intervals.

Documents. An evaluation JSON with `loss[set]["per_document"]` ({"tokens": [...], "nats": [...],
"token_level_tokens": [...], "token_level_nats": [...]}) gives each document's token count c_d and summed loss s_d;
a replicate draws D documents with replacement and takes the ratio of the resampled sums, sum(s) / sum(c) (the
all-token loss is that ratio over all documents). Runs evaluated on the same documents (equal per-document token
counts) are resampled with the SAME indices in a replicate (paired), so differences between models carry only the
models' disagreement, not the luck of the draw of the evaluation set.

Normal approximation (older JSON without per_document): replicate = L + se * z, z ~ N(0, 1) drawn independently per
run, se = the stored `nats_per_token_stderr` (documents as clusters, domain_loss.py). It ignores the pairing, so
intervals on differences between models are wider than the paired bootstrap's. Without either, no interval.

Seeds: where several runs share a group (size and arm), a replicate also draws the group's runs with replacement and
averages their replicate losses (nats/token), so seed-to-seed variation enters the interval.

Intervals are percentile intervals: the 2.5% and 97.5% quantiles of the replicates (numpy's linear interpolation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DOC_METHOD = "bootstrap over evaluation documents"
NORMAL_METHOD = "normal approximation from the stored stderr (no per-document data)"


@dataclass
class LossSource:
    """One run's loss on one set and metric: the point value and what the replicates can be drawn from."""

    point: float
    tokens: np.ndarray | None = None  # per document
    nats: np.ndarray | None = None  # per document, summed
    stderr: float | None = None

    def __post_init__(self):
        if (self.tokens is None) != (self.nats is None):
            raise ValueError("per_document needs both token counts and nats")
        if self.tokens is not None:
            self.tokens = np.asarray(self.tokens, dtype=np.float64)
            self.nats = np.asarray(self.nats, dtype=np.float64)
            if self.tokens.shape != self.nats.shape or self.tokens.ndim != 1 or self.tokens.size == 0:
                raise ValueError(f"per_document: {self.tokens.shape} token counts but {self.nats.shape} nats")
            if self.tokens.sum() <= 0:
                raise ValueError("per_document: no tokens")

    @property
    def method(self) -> str | None:
        if self.tokens is not None:
            return DOC_METHOD
        return NORMAL_METHOD if self.stderr is not None else None


def ratio_replicates(tokens: np.ndarray, nats: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """sum(nats[idx]) / sum(tokens[idx]) per row of idx (B, D); NaN where a replicate drew no token."""
    c = tokens[idx].sum(axis=1)
    s = nats[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.where(c > 0, c, 1.0), np.nan)


_CHUNK_ENTRIES = 1 << 23  # indices drawn at a time (64 MiB of int64), so large evaluation sets stay in memory


def _doc_replicates(src: LossSource, n_boot: int, seed: int) -> np.ndarray:
    """n_boot ratio replicates; the indices come from Generator(seed) in row chunks, so every run given the same
    seed (the same evaluation documents) is resampled with the same indices."""
    g = np.random.default_rng(seed)
    d = src.tokens.size
    rows = max(1, _CHUNK_ENTRIES // d)
    out = [ratio_replicates(src.tokens, src.nats, g.integers(0, d, size=(min(rows, n_boot - i), d)))
           for i in range(0, n_boot, rows)]
    return np.concatenate(out) if out else np.empty(0)


def replicate_losses(sources: dict[str, LossSource], n_boot: int, rng: np.random.Generator
                     ) -> dict[str, np.ndarray | None]:
    """(n_boot,) replicate losses per run key; runs with identical per-document token counts share indices."""
    out: dict[str, np.ndarray | None] = {}
    seeds: dict[tuple, int] = {}  # (D, token-count bytes) -> index seed
    for key in sorted(sources):
        src = sources[key]
        if src.tokens is not None:
            sig = (src.tokens.size, src.tokens.tobytes())
            if sig not in seeds:
                seeds[sig] = int(rng.integers(0, 2**63 - 1))
            out[key] = _doc_replicates(src, n_boot, seeds[sig])
        elif src.stderr is not None:
            out[key] = src.point + float(src.stderr) * rng.standard_normal(n_boot)
        else:
            out[key] = None
    return out


def group_replicates(members: list[np.ndarray | None], n_boot: int, rng: np.random.Generator) -> np.ndarray | None:
    """Mean over a group's runs (seeds) per replicate, the runs drawn with replacement; None if any run has none."""
    if not members or any(m is None for m in members):
        return None
    if len(members) == 1:
        return members[0]
    stack = np.stack(members)  # (k, B)
    pick = rng.integers(0, len(members), size=(n_boot, len(members)))
    return stack[pick, np.arange(n_boot)[:, None]].mean(axis=1)


def ols_batch(x: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares y = a + b x for every row of Y (B, G) against the fixed x (G,): (a, b) as (B,) arrays."""
    x = np.asarray(x, dtype=np.float64)
    xm = x.mean()
    sxx = float(((x - xm) ** 2).sum())
    if sxx == 0:
        raise ValueError("ols_batch: x has no spread")
    ym = Y.mean(axis=1)
    b = ((Y - ym[:, None]) * (x - xm)).sum(axis=1) / sxx
    return ym - b * xm, b


def percentile_ci(values: np.ndarray | None, level: float = 0.95) -> list[float] | None:
    """[low, high] percentile interval of the finite replicates; None when fewer than 10 are finite."""
    if values is None:
        return None
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 10:
        return None
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]
