"""Probes (labeling/classifier/probe.py): a planted linear label is recovered; class balance; MLP; prior shift."""

from __future__ import annotations

import math

import numpy as np
import torch

from megatron_tf.labeling.classifier.probe import balanced_weights, fit_probe, prior_shift


def test_logistic_probe_recovers_a_planted_linearly_separable_label():
    """y = [x . w > c] with 5% positives, on unstandardised features: the fitted probe classifies held-out points
    correctly and its boundary in input space is the planted one (direction and offset)."""
    g = torch.Generator().manual_seed(0)
    d = 24
    w = torch.randn(d, generator=g)
    x = torch.randn(12000, d, generator=g) * torch.linspace(0.2, 3.0, d) + torch.linspace(-1, 1, d)
    c = float(torch.quantile(x @ w, 0.95))
    y = x @ w > c
    fit = fit_probe(x[:6000], y[:6000], kind="logistic", l2=1e-8)
    held = (fit.probe(x[6000:]) > 0) == y[6000:]
    assert held.float().mean() > 0.995
    # boundary of the probe: (x - mean) / std . v + b = 0  <=>  x . (v / std) = (v / std) . mean - b
    direction = fit.probe.head.weight[0].detach() / fit.probe.std
    offset = float(direction @ fit.probe.mean - fit.probe.head.bias[0].detach())
    cos = float(torch.nn.functional.cosine_similarity(direction, w, dim=0))
    assert cos > 0.99, cos
    scale = float(direction.norm() / w.norm())
    assert abs(offset / scale - c) < 0.05 * abs(c) + 0.05, (offset / scale, c)


def test_balanced_weights_give_each_class_half():
    y = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0, 0, 0]).bool()
    a = balanced_weights(y)
    assert math.isclose(float(a[y].sum()), 0.5) and math.isclose(float(a[~y].sum()), 0.5)
    assert math.isclose(float(a[0]), 0.25) and math.isclose(float(a[1]), 1 / 16)


def test_class_balance_moves_the_boundary_to_the_rare_class():
    """Overlapping 1-D classes with 5% positives: the balanced probe's 0.5 point sits between the class means
    (midpoint for equal variances); an unweighted fit would put it far into the positive class."""
    g = torch.Generator().manual_seed(3)
    neg = torch.randn(9500, 1, generator=g)
    pos = torch.randn(500, 1, generator=g) + 2.0
    x = torch.cat([neg, pos])
    y = torch.cat([torch.zeros(9500), torch.ones(500)]).bool()
    fit = fit_probe(x, y, l2=0.0)
    grid = torch.linspace(-2, 4, 6001)[:, None]
    p = fit.probe.probabilities(grid)
    boundary = float(grid[int((p >= 0.5).float().argmax())])
    assert abs(boundary - 1.0) < 0.1, boundary
    # natural-rate calibration: shifting by log(pi / (1 - pi)) moves the boundary up by log(19) / 2 = 1.47
    p_nat = fit.probe.probabilities(grid, prior_shift(0.05))
    b_nat = float(grid[int((p_nat >= 0.5).float().argmax())])
    assert abs(b_nat - (1.0 + math.log(19) / 2)) < 0.12, b_nat


def test_mlp_head_learns_what_a_linear_probe_cannot():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4000, 2, generator=g)
    y = (x[:, 0] * x[:, 1]) > 0  # XOR of signs: not linearly separable
    lin = fit_probe(x, y, kind="logistic")
    mlp = fit_probe(x, y, kind="mlp", hidden=32, epochs=30, batch_size=256, lr=1e-2, l2=0.0, seed=0)
    acc_lin = float(((lin.probe(x) > 0) == y).float().mean())
    acc_mlp = float(((mlp.probe(x) > 0) == y).float().mean())
    assert acc_lin < 0.65 and acc_mlp > 0.95, (acc_lin, acc_mlp)
    again = fit_probe(x, y, kind="mlp", hidden=32, epochs=30, batch_size=256, lr=1e-2, l2=0.0, seed=0)
    assert torch.equal(again.probe(x), mlp.probe(x))  # seeded: reproducible


def test_one_class_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="both classes"):
        fit_probe(torch.randn(10, 3), torch.zeros(10, dtype=torch.bool))
    assert np.isfinite(prior_shift(0.02))
