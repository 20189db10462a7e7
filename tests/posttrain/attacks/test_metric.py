"""tokens-to-baseline on planted curves."""

import math

import pytest

from megatron_tf.posttrain.attacks.metric import (
    aggregate_seeds,
    best_setting,
    percent_of_pretraining,
    tokens_to_baseline,
)


def test_interpolated_crossing():
    c = tokens_to_baseline([0, 100, 200], [5.0, 4.0, 3.0], 3.5)
    assert c.status == "crossed" and c.tokens == pytest.approx(150.0) and c.max_tokens == 200
    # first crossing counts, even if the curve goes back up afterwards
    c = tokens_to_baseline([0, 10, 20, 30, 40], [6.0, 5.5, 4.9, 5.2, 4.0], 5.0)
    assert c.tokens == pytest.approx(10 + (5.5 - 5.0) / (5.5 - 4.9) * 10)
    # landing exactly on the baseline
    assert tokens_to_baseline([0, 64, 128], [3.0, 2.5, 2.0], 2.5).tokens == pytest.approx(64.0)


def test_already_below_and_never():
    c = tokens_to_baseline([0, 50], [2.0, 1.5], 2.5)
    assert (c.status, c.tokens) == ("already_below", 0.0)
    c = tokens_to_baseline([0, 50, 100], [5.0, 4.0, 3.6], 3.5)
    assert (c.status, c.tokens, c.max_tokens) == ("never", None, 100.0)
    c = tokens_to_baseline([0, 50, 100], [5.0, math.nan, 3.0], 3.5)  # diverged point skipped, not reached there
    assert c.tokens == pytest.approx(100.0)  # no interpolation from a diverged point
    with pytest.raises(ValueError, match="increasing"):
        tokens_to_baseline([0, 50, 50], [3, 2, 1], 1.5)


def test_seeds_and_best_setting():
    a = aggregate_seeds([tokens_to_baseline([0, 100], [4, 2], 3), tokens_to_baseline([0, 100], [4, 3], 3.5)])
    assert a["tokens"] == pytest.approx((50 + 50) / 2) and a["n_reached"] == 2
    b = aggregate_seeds([tokens_to_baseline([0, 100], [4, 2], 3), tokens_to_baseline([0, 100], [4, 3.9], 3)])
    assert b["tokens"] is None and b["n_reached"] == 1
    k, best = best_setting({"lr1": a, "lr2": b, "lr3": {**a, "tokens": 80.0}})
    assert k == "lr1" and best["tokens"] == 50
    assert best_setting({"lr2": b}) == (None, None)
    assert percent_of_pretraining(50, 1000) == pytest.approx(5.0)
    assert percent_of_pretraining(None, 1000) is None
