"""Contrastive choice of domain latents from documents known to be in / out of the domain.

For every latent, from `LatentStats` over a "domain" and an "other" group:

    freq_domain = P(latent > 0 | domain token),  freq_other = P(latent > 0 | other token)    (BOS excluded)
    ratio       = (n_active_domain + 1) / (n_domain + 2)  /  ((n_active_other + 1) / (n_other + 2))   (Laplace)
    auroc       = P(mean activation over a random domain document > that over a random other document),
                  ties counted 1/2 (Mann-Whitney U / (n_pos n_neg), average ranks)

Candidates must fire on at least `min_freq` of domain tokens and have ratio >= `min_ratio`; they are ranked by AUROC
(ties: ratio, then id) and the first `top_k` are kept. Document-level AUROC measures "fires on domain documents and
not on the others"; the token-level frequency ratio keeps latents that are specific at the token level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .latents import Latent, LatentList
from .rule import thresholds_from_moments
from .stats import LatentStats


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks (1-based) of x along axis 0, ties given their average rank; x is [n, m]."""
    x = np.asarray(x)
    n = x.shape[0]
    order = np.argsort(x, axis=0, kind="stable")
    xs = np.take_along_axis(x, order, axis=0)
    idx = np.arange(n)[:, None] * np.ones((1, x.shape[1]), dtype=np.int64)
    new = np.ones_like(xs, dtype=bool)
    new[1:] = xs[1:] != xs[:-1]
    first = np.maximum.accumulate(np.where(new, idx, 0), axis=0)  # first sorted position of the tie group
    last_new = np.ones_like(new)
    last_new[:-1] = new[1:]
    last = np.flip(np.minimum.accumulate(np.flip(np.where(last_new, idx, n - 1), axis=0), axis=0), axis=0)
    ranks_sorted = (first + last) / 2.0 + 1.0
    ranks = np.empty_like(ranks_sorted)
    np.put_along_axis(ranks, order, ranks_sorted, axis=0)
    return ranks


def auroc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC of each column of scores [n, m] for the boolean labels `positive` [n] (0.5 when a class is empty)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(np.shape(scores)[1], 0.5)
    r = average_ranks(np.asarray(scores, dtype=np.float64))
    u = r[positive].sum(0) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


@dataclass
class SelectionTable:
    freq_domain: np.ndarray
    freq_other: np.ndarray
    ratio: np.ndarray
    auroc: np.ndarray


def selection_table(stats: LatentStats, domain: int = 0, other: int = 1) -> SelectionTable:
    nd, no = int(stats.n_tokens[domain]), int(stats.n_tokens[other])
    fd = stats.n_active[domain] / max(nd, 1)
    fo = stats.n_active[other] / max(no, 1)
    ratio = ((stats.n_active[domain] + 1) / (nd + 2)) / ((stats.n_active[other] + 1) / (no + 2))
    dm, dg = stats.doc_mean_matrix()
    keep = (dg == domain) | (dg == other)
    au = auroc(dm[keep], dg[keep] == domain) if keep.any() else np.full(stats.d_sae, 0.5)
    return SelectionTable(fd, fo, ratio, au)


def select_latents(stats: LatentStats, top_k: int = 32, min_freq: float = 1e-3, min_ratio: float = 2.0,
                   threshold_k: float = 4.0, domain: int = 0, other: int = 1) -> tuple[LatentList, SelectionTable]:
    """The top_k domain latents, with thresholds mean + threshold_k * std over all groups of `stats`."""
    t = selection_table(stats, domain, other)
    cand = np.flatnonzero((t.freq_domain >= min_freq) & (t.ratio >= min_ratio))
    order = sorted(cand.tolist(), key=lambda i: (-t.auroc[i], -t.ratio[i], i))[:top_k]
    mean, std, n = stats.mean_std()
    thr = thresholds_from_moments(mean, std, threshold_k)
    latents = [Latent(int(i), f"contrastive: fires on {t.freq_domain[i]:.2%} of {stats.groups[domain]} tokens, "
                              f"{t.freq_other[i]:.2%} of {stats.groups[other]} tokens",
                      float(thr[i]), float(t.auroc[i]),
                      {"auroc": float(t.auroc[i]), "freq_domain": float(t.freq_domain[i]),
                       "freq_other": float(t.freq_other[i]), "ratio": float(t.ratio[i]),
                       "mean": float(mean[i]), "std": float(std[i])})
               for i in order]
    header = {"threshold_rule": {"k": threshold_k, "num_tokens": n, "groups": stats.groups},
              "selection": {"method": "contrastive", "top_k": top_k, "min_freq": min_freq, "min_ratio": min_ratio,
                            "num_candidates": int(cand.size), "rank_by": "document-level AUROC"}}
    return LatentList(latents, header), t


def fill_thresholds(ll: LatentList, stats: LatentStats, k: float, overwrite: bool = False) -> LatentList:
    """Give latents without a threshold (or all, with overwrite) mean + k std over all groups of `stats`."""
    ll.check_range(stats.d_sae)
    mean, std, n = stats.mean_std()
    thr = thresholds_from_moments(mean, std, k)
    for x in ll.latents:
        if x.threshold is None or overwrite:
            x.threshold = float(thr[x.id])
            x.extra.update({"mean": float(mean[x.id]), "std": float(std[x.id])})
    ll.header["threshold_rule"] = {"k": k, "num_tokens": n, "groups": stats.groups, "overwrite": overwrite}
    return ll
