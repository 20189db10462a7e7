"""Bootstrap replicates against cases with known answers: the standard error of a mean, a degenerate set, exact
pairing of runs on the same documents, the normal fallback, seed resampling, batched least squares."""

import numpy as np
import pytest

from megatron_tf.evaluation.intervals import (
    DOC_METHOD,
    NORMAL_METHOD,
    LossSource,
    group_replicates,
    ols_batch,
    percentile_ci,
    ratio_replicates,
    replicate_losses,
)


def test_bootstrap_standard_error_of_a_mean():
    """Equal token counts: the ratio is a mean of per-document rates, whose bootstrap variance is exactly
    sigma^2 / D with sigma^2 the population (ddof = 0) variance."""
    rng = np.random.default_rng(1)
    rates = rng.normal(5.0, 1.0, size=40)
    tokens = np.full(40, 100.0)
    reps = replicate_losses({"a": LossSource(rates.mean(), tokens, rates * 100)}, 20000, np.random.default_rng(2))["a"]
    se = rates.std(ddof=0) / np.sqrt(40)
    assert reps.mean() == pytest.approx(rates.mean(), abs=0.05 * se)
    assert reps.std() == pytest.approx(se, rel=0.03)
    lo, hi = percentile_ci(reps)
    assert lo == pytest.approx(rates.mean() - 1.96 * se, abs=0.1 * se)
    assert hi == pytest.approx(rates.mean() + 1.96 * se, abs=0.1 * se)


def test_bootstrap_degenerate_and_ratio_of_sums():
    # every document has 2.5 nats/token: every replicate is exactly 2.5, whatever the token counts
    tokens = np.array([3.0, 10.0, 1.0, 7.0])
    reps = replicate_losses({"a": LossSource(2.5, tokens, 2.5 * tokens)}, 200, np.random.default_rng(0))["a"]
    assert np.allclose(reps, 2.5) and percentile_ci(reps) == pytest.approx([2.5, 2.5])
    # ratio of resampled sums, not mean of ratios: documents (1 token, 9 nats) and (9 tokens, 9 nats) drawn once each
    idx = np.array([[0, 1], [0, 0], [1, 1]])
    assert ratio_replicates(np.array([1.0, 9.0]), np.array([9.0, 9.0]), idx).tolist() == [1.8, 9.0, 1.0]


def test_paired_documents_cancel_shared_noise():
    """Two runs on the same documents whose per-document loss differs by exactly 0.1 nats/token: every paired
    replicate of the difference is 0.1; a third run on other documents gets its own indices."""
    rng = np.random.default_rng(3)
    tokens = rng.integers(50, 500, size=30).astype(float)
    nats = tokens * rng.normal(4.0, 0.5, size=30)
    src = {"x": LossSource(nats.sum() / tokens.sum(), tokens, nats),
           "y": LossSource(nats.sum() / tokens.sum() + 0.1, tokens, nats + 0.1 * tokens),
           "z": LossSource(1.0, tokens[:10], tokens[:10])}
    reps = replicate_losses(src, 500, np.random.default_rng(4))
    assert np.allclose(reps["y"] - reps["x"], 0.1)
    assert reps["x"].std() > 0.01 and src["x"].method == DOC_METHOD
    assert np.allclose(reps["z"], 1.0)


def test_normal_fallback_and_missing():
    src = {"a": LossSource(3.0, stderr=0.02), "b": LossSource(3.0)}
    reps = replicate_losses(src, 20000, np.random.default_rng(5))
    assert reps["b"] is None and src["b"].method is None and src["a"].method == NORMAL_METHOD
    assert reps["a"].mean() == pytest.approx(3.0, abs=1e-3) and reps["a"].std() == pytest.approx(0.02, rel=0.03)
    with pytest.raises(ValueError, match="per_document"):
        LossSource(1.0, tokens=[1, 2], nats=[1.0])


def test_seed_resampling():
    """Two seeds with constant replicates 1.0 and 3.0: a replicate is the mean of 2 draws with replacement, so it is
    1, 2 or 3 with probabilities 1/4, 1/2, 1/4."""
    n = 40000
    out = group_replicates([np.full(n, 1.0), np.full(n, 3.0)], n, np.random.default_rng(6))
    freq = {v: float(np.mean(out == v)) for v in (1.0, 2.0, 3.0)}
    assert freq[1.0] == pytest.approx(0.25, abs=0.01) and freq[2.0] == pytest.approx(0.5, abs=0.01)
    assert group_replicates([np.ones(3), None], 3, np.random.default_rng(0)) is None


def test_ols_batch_matches_polyfit():
    x = np.log([1e12, 5e12, 3e13, 2e14])
    Y = np.random.default_rng(7).normal(size=(5, 4))
    a, b = ols_batch(x, Y)
    for i in range(5):
        bb, aa = np.polyfit(x, Y[i], 1)
        assert a[i] == pytest.approx(aa) and b[i] == pytest.approx(bb)
    assert percentile_ci(np.array([np.nan] * 20)) is None


def test_chunked_draws_keep_the_pairing(monkeypatch):
    """With a tiny chunk the indices come in many row chunks; runs on the same documents stay paired exactly."""
    import megatron_tf.evaluation.intervals as iv

    monkeypatch.setattr(iv, "_CHUNK_ENTRIES", 7)
    tokens = np.arange(1.0, 6.0)
    nats = tokens * np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    reps = replicate_losses({"x": LossSource(0.0, tokens, nats), "y": LossSource(0.0, tokens, nats + 0.5 * tokens)},
                            101, np.random.default_rng(8))
    assert reps["x"].shape == (101,) and np.allclose(reps["y"] - reps["x"], 0.5) and reps["x"].std() > 0.1
