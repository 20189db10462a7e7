"""Metrics (labeling/classifier/metrics.py) against hand computations (no sklearn)."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_tf.labeling.classifier.metrics import (
    at_threshold,
    average_precision,
    balanced_weights,
    calibration_table,
    evaluate_scores,
    expected_calibration_error,
    f1_optimal,
    plot_pr_curves,
    pr_curve,
    roc_auc,
)

# positives score 0.9 and 0.8; negatives 0.8, 0.3, 0.1
S = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
Y = np.array([1, 0, 1, 0, 0], bool)


def test_auroc_counts_ties_as_one_half():
    # pairs (pos, neg): 0.9 beats all 3; 0.8 ties 0.8 (1/2) and beats 0.3, 0.1: (3 + 2.5) / 6
    assert roc_auc(S, Y) == pytest.approx(5.5 / 6)
    assert roc_auc(S, Y, balanced_weights(Y)) == pytest.approx(5.5 / 6)  # class weights do not change AUROC
    assert roc_auc([0.2, 0.2], [1, 0]) == pytest.approx(0.5)
    assert roc_auc([0.1, 0.9], [1, 0]) == pytest.approx(0.0)


def test_pr_curve_and_f1_by_hand():
    c = pr_curve(S, Y)
    # thresholds 0.9: TP 1 FP 0; 0.8: TP 2 FP 1; 0.3: TP 2 FP 2; 0.1: TP 2 FP 3
    np.testing.assert_allclose(c["threshold"], [0.9, 0.8, 0.3, 0.1])
    np.testing.assert_allclose(c["precision"], [1.0, 2 / 3, 0.5, 0.4])
    np.testing.assert_allclose(c["recall"], [0.5, 1.0, 1.0, 1.0])
    best = f1_optimal(S, Y)
    assert best == pytest.approx({"threshold": 0.8, "precision": 2 / 3, "recall": 1.0, "f1": 0.8})
    # AP = 0.5 * 1 + 0.5 * 2/3
    assert average_precision(S, Y) == pytest.approx(0.5 + 1 / 3)


def test_class_balanced_operating_point_by_hand():
    w = balanced_weights(Y)  # negatives weigh 2/3 each: both classes total 2
    np.testing.assert_allclose(w, [1, 2 / 3, 1, 2 / 3, 2 / 3])
    # threshold 0.8: TP 2, FP 2/3 -> precision 0.75, recall 1, F1 6/7; threshold 0.3: FP 4/3 -> P 0.6, F1 0.75
    best = f1_optimal(S, Y, w)
    assert best == pytest.approx({"threshold": 0.8, "precision": 0.75, "recall": 1.0, "f1": 6 / 7})
    r = at_threshold(S, Y, 0.3, w)
    assert r["precision"] == pytest.approx(0.6) and r["f1"] == pytest.approx(0.75)
    assert r["flagged_fraction"] == pytest.approx((2 + 4 / 3) / 4)


def test_calibration_table_by_hand():
    t = calibration_table(S, Y, bins=2)
    assert t[0] == pytest.approx({"lo": 0.0, "hi": 0.5, "count": 2, "weight": 2.0, "mean_score": 0.2,
                                  "forget_rate": 0.0})
    assert t[1] == pytest.approx({"lo": 0.5, "hi": 1.0, "count": 3, "weight": 3.0, "mean_score": 2.5 / 3,
                                  "forget_rate": 2 / 3})
    # ECE = (2 |0.2 - 0| + 3 |0.8333 - 0.6667|) / 5
    assert expected_calibration_error(t) == pytest.approx((2 * 0.2 + 3 * (2.5 / 3 - 2 / 3)) / 5)
    assert calibration_table([1.0], [1], bins=4)[3]["count"] == 1  # score 1.0 falls in the last bin


def test_sample_weights_estimate_the_full_population():
    """A class-capped token sample with weights 1 / p_c gives the same natural-rate metrics as the full data when
    the sample keeps a fixed fraction per class (here: every 4th negative, weight 4)."""
    rng = np.random.default_rng(0)
    y = rng.random(4000) < 0.05
    s = np.clip(rng.normal(0.3 + 0.4 * y, 0.15), 0, 1).round(3)
    full = evaluate_scores(s, y)
    neg = np.flatnonzero(~y)
    keep = np.sort(np.r_[np.flatnonzero(y), neg[::4]])
    wts = np.where(y[keep], 1.0, len(neg) / len(neg[::4]))
    part = evaluate_scores(s[keep], y[keep], wts)
    assert part["base_rate"] == pytest.approx(full["base_rate"])
    assert part["natural"]["f1"] == pytest.approx(full["natural"]["f1"], abs=0.03)
    assert part["auroc"] == pytest.approx(full["auroc"], abs=0.01)


def test_report_fields_and_plot(tmp_path):
    m = evaluate_scores(S, Y, bins=2)
    assert m["tokens"] == 5 and m["positives"] == 2 and m["base_rate"] == pytest.approx(0.4)
    assert m["balanced"]["f1"] == pytest.approx(6 / 7) and m["natural"]["f1"] == pytest.approx(0.8)
    assert m["natural_at_balanced_threshold"]["precision"] == pytest.approx(2 / 3)
    p = plot_pr_curves({"a": pr_curve(S, Y)}, str(tmp_path / "pr.png"), "t", 0.4)
    with open(p, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="both classes"):
        evaluate_scores([0.1, 0.2], [0, 0])
