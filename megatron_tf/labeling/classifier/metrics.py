"""Token-classifier metrics: AUROC, precision/recall/F1 at the F1-optimal threshold, PR curve, calibration.

All functions take scores s_i, binary labels y_i and optional weights a_i (default 1). A threshold T predicts
"forget" for s_i >= T. With weights, every count below is a sum of weights:

    TP(T) = sum a_i [s_i >= T, y_i]   FP(T) = sum a_i [s_i >= T, not y_i]   P = sum a_i [y_i]
    precision = TP / (TP + FP)   recall = TP / P   F1 = 2 precision recall / (precision + recall)
    AUROC = sum_{i pos, j neg} a_i a_j ([s_i > s_j] + [s_i = s_j] / 2) / (P N)     (ties count one half)
    average precision = sum_k (R_k - R_{k-1}) P_k over the distinct thresholds, highest first (R_0 = 0)

Two operating conditions are reported (`evaluate_scores`):
- class-balanced: negatives weighted n_pos / n_neg, so both classes weigh the same. This is the expectation of the
  paper's evaluation on class-balanced samples (all positives, as many random negatives), without its sampling
  noise. AUROC does not change with class weights; precision and F1 do.
- natural: every token weight 1, at the corpus' own base rate (forget tokens are a few percent of a corpus; the
  paper did not report this). Precision falls with the base rate at equal recall: at base rate pi, a classifier
  with balanced precision p_b has natural precision pi p_b / (pi p_b + (1 - pi)(1 - p_b)).
Calibration table: equal-width score bins, per bin the token count, mean score and observed forget rate.
"""

from __future__ import annotations

import numpy as np


def _prep(scores, labels, weights):
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.size} vs {y.size}")
    a = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if a.shape != s.shape:
        raise ValueError(f"weights have {a.size} entries for {s.size} scores")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return s, y, a


def balanced_weights(labels, weights=None) -> np.ndarray:
    """Positives keep their weight (default 1), negatives are scaled so both classes have the same total."""
    y = np.asarray(labels).astype(bool)
    a = np.ones(y.shape) if weights is None else np.asarray(weights, dtype=np.float64)
    pos, neg = a[y].sum(), a[~y].sum()
    if pos == 0 or neg == 0:
        raise ValueError(f"class-balanced metrics need both classes: {int(y.sum())} positive, {int((~y).sum())} "
                         "negative tokens")
    return np.where(y, a, a * (pos / neg))


def roc_auc(scores, labels, weights=None) -> float:
    s, y, a = _prep(scores, labels, weights)
    pos_total, neg_total = a[y].sum(), a[~y].sum()
    if pos_total == 0 or neg_total == 0:
        raise ValueError("AUROC needs both classes")
    order = np.argsort(s, kind="stable")
    s, y, a = s[order], y[order], a[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos_g = np.add.reduceat(np.where(y, a, 0.0), starts)
    neg_g = np.add.reduceat(np.where(y, 0.0, a), starts)
    neg_below = np.cumsum(neg_g) - neg_g
    return float((pos_g * (neg_below + 0.5 * neg_g)).sum() / (pos_total * neg_total))


def pr_curve(scores, labels, weights=None) -> dict[str, np.ndarray]:
    """Per distinct score T (descending): threshold, TP, FP, precision, recall (predict s >= T)."""
    s, y, a = _prep(scores, labels, weights)
    pos_total = a[y].sum()
    if pos_total == 0:
        raise ValueError("a precision/recall curve needs positive labels")
    order = np.argsort(-s, kind="stable")
    s, y, a = s[order], y[order], a[order]
    tp = np.cumsum(np.where(y, a, 0.0))
    fp = np.cumsum(np.where(y, 0.0, a))
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each tie group
    tp, fp = tp[last], fp[last]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
    return {"threshold": s[last], "tp": tp, "fp": fp, "precision": precision, "recall": tp / pos_total}


def average_precision(scores, labels, weights=None) -> float:
    c = pr_curve(scores, labels, weights)
    r = np.r_[0.0, c["recall"]]
    return float(((r[1:] - r[:-1]) * c["precision"]).sum())


def _f1(p, r):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(p + r > 0, 2 * p * r / (p + r), 0.0)


def f1_optimal(scores, labels, weights=None) -> dict[str, float]:
    """Threshold maximising F1 (on ties the highest such threshold), with its precision, recall and F1."""
    c = pr_curve(scores, labels, weights)
    f1 = _f1(c["precision"], c["recall"])
    k = int(np.argmax(f1))
    return {"threshold": float(c["threshold"][k]), "precision": float(c["precision"][k]),
            "recall": float(c["recall"][k]), "f1": float(f1[k])}


def at_threshold(scores, labels, threshold: float, weights=None) -> dict[str, float]:
    s, y, a = _prep(scores, labels, weights)
    pred = s >= threshold
    tp, fp = a[pred & y].sum(), a[pred & ~y].sum()
    pos = a[y].sum()
    p = float(tp / (tp + fp)) if tp + fp > 0 else 1.0
    r = float(tp / pos) if pos > 0 else 0.0
    return {"threshold": float(threshold), "precision": p, "recall": r, "f1": float(_f1(np.array(p), np.array(r))),
            "flagged_fraction": float(a[pred].sum() / a.sum()) if a.sum() > 0 else 0.0}


def calibration_table(scores, labels, bins: int = 10, weights=None) -> list[dict]:
    """Equal-width bins over [0, 1] (scores outside are clipped into the end bins); empty bins are listed with
    count 0."""
    s, y, a = _prep(scores, labels, weights)
    idx = np.clip((s * bins).astype(np.int64), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        w = a[m].sum()
        rows.append({"lo": b / bins, "hi": (b + 1) / bins, "count": int(m.sum()), "weight": float(w),
                     "mean_score": float((a[m] * s[m]).sum() / w) if w > 0 else None,
                     "forget_rate": float(a[m & y].sum() / w) if w > 0 else None})
    return rows


def expected_calibration_error(table: list[dict]) -> float:
    total = sum(r["weight"] for r in table)
    return float(sum(r["weight"] * abs(r["mean_score"] - r["forget_rate"]) for r in table if r["weight"] > 0)
                 / total) if total > 0 else 0.0


def evaluate_scores(scores, labels, weights=None, bins: int = 10) -> dict:
    """The report of one scorer: AUROC; balanced and natural F1-optimal operating points and average precision;
    natural-rate metrics at the balanced-optimal threshold (what deploying the paper's operating point gives);
    calibration tables. `weights`: natural-rate weights of a token sample (corpus.class_sample), default 1."""
    s, y, a = _prep(scores, labels, weights)
    wb = balanced_weights(y, a)
    bal = f1_optimal(s, y, wb)
    nat = f1_optimal(s, y, a)
    table = calibration_table(s, y, bins, a)
    table_b = calibration_table(s, y, bins, wb)
    return {
        "tokens": int(y.size), "positives": int(y.sum()), "base_rate": float(a[y].sum() / a.sum()),
        "auroc": roc_auc(s, y, a),
        "balanced": {**bal, "average_precision": average_precision(s, y, wb)},
        "natural": {**nat, "average_precision": average_precision(s, y, a)},
        "natural_at_balanced_threshold": at_threshold(s, y, bal["threshold"], a),
        "calibration_natural": table, "ece_natural": expected_calibration_error(table),
        "calibration_balanced": table_b, "ece_balanced": expected_calibration_error(table_b),
    }


def plot_pr_curves(curves: dict[str, dict], path: str, title: str, base_rate: float | None = None) -> str:
    """PNG of precision vs recall for each named pr_curve() result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, c in curves.items():
        ax.step(np.r_[0.0, c["recall"]], np.r_[c["precision"][0], c["precision"]], where="post", label=name)
    if base_rate is not None:
        ax.axhline(base_rate, color="grey", lw=0.8, ls="--", label=f"base rate {base_rate:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
