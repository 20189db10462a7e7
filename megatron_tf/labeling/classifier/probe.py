"""Token probes on biLM features: class-balanced logistic regression, or a small MLP head.

Both standardise the features with the training set's mean and standard deviation (stored with the probe), then

    logistic   p = sigmoid(w . z + b)
    mlp        p = sigmoid(w2 . relu(W1 z + b1) + b2)

Training objective, with class-balanced weights (each class carries half of the total weight, so a rare forget
class is not ignored; the paper trains on class-balanced data):

    L = sum_i a_i BCE(logit_i, y_i) / sum_i a_i + (l2 / 2) |W|^2,   a_i = 1 / (2 n_{y_i})   (biases not penalised)

The logistic probe is fitted full-batch with L-BFGS (strong Wolfe line search) in float64 (float32 above 5e7 feature
values, i.e. N x d x 8 bytes > 400 MB, to bound memory): the objective is convex,
so the result depends on the data and l2 only (no learning rate, no minibatch order). The MLP is fitted with AdamW
over seeded minibatches drawn with the same class-balanced weights. Probabilities are calibrated to the balanced
prior (a token of unknown class is forget with probability 1/2); `prior_shift(base_rate)` is the logit offset
log(pi / (1 - pi)) that re-calibrates them to a natural base rate pi (Bayes' rule with the balanced likelihood
ratio), used when an artifact is asked for natural-rate probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

PROBE_KINDS = ("logistic", "mlp")


class Probe(nn.Module):
    """Standardisation + logistic or MLP head; `forward(x [N, d]) -> logits [N]` (float32)."""

    def __init__(self, dim: int, kind: str = "logistic", hidden: int = 256):
        super().__init__()
        if kind not in PROBE_KINDS:
            raise ValueError(f"probe kind must be one of {PROBE_KINDS}, got {kind!r}")
        self.kind, self.dim, self.hidden = kind, int(dim), int(hidden)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        if kind == "logistic":
            self.head = nn.Linear(dim, 1)
        else:
            self.head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.to(self.mean.dtype) - self.mean) / self.std
        return self.head(z).squeeze(-1)

    def probabilities(self, x: torch.Tensor, logit_shift: float = 0.0) -> torch.Tensor:
        return torch.sigmoid(self.forward(x) + logit_shift)

    def penalised(self) -> list[torch.Tensor]:
        return [m.weight for m in self.head.modules() if isinstance(m, nn.Linear)]

    def config(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "hidden": self.hidden if self.kind == "mlp" else None}


def prior_shift(base_rate: float) -> float:
    """Logit offset turning balanced-prior probabilities into probabilities at base rate pi."""
    if not 0.0 < base_rate < 1.0:
        raise ValueError(f"base rate must be in (0, 1), got {base_rate}")
    return math.log(base_rate / (1.0 - base_rate))


def balanced_weights(y: torch.Tensor) -> torch.Tensor:
    """a_i = 1 / (2 n_{y_i}): each class sums to 1/2."""
    y = y.bool()
    n_pos = int(y.sum())
    n_neg = int(y.numel() - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"class-balanced training needs both classes; got {n_pos} positive and {n_neg} negative "
                         "tokens (check the label sidecar and threshold)")
    return torch.where(y, 0.5 / n_pos, 0.5 / n_neg).to(torch.float64)


@dataclass
class ProbeFit:
    probe: Probe
    loss: float
    steps: int


def _standardise(probe: Probe, x: torch.Tensor) -> None:
    mean = x.mean(0, dtype=torch.float64)
    std = x.to(torch.float64).std(0, unbiased=False)
    probe.mean.copy_(mean.float())
    probe.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)).float())


def fit_probe(x: torch.Tensor, y: torch.Tensor, *, kind: str = "logistic", l2: float = 1e-4, hidden: int = 256,
              max_iter: int = 500, epochs: int = 30, batch_size: int = 1024, lr: float = 1e-3,
              seed: int = 1234) -> ProbeFit:
    """Fit a class-balanced probe on features x [N, d] (float) and labels y [N] (bool/0-1); see module doc."""
    if x.dim() != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"fit_probe: expected x [N, d] and y [N], got {tuple(x.shape)} and {tuple(y.shape)}")
    x = x.detach().float().cpu()
    y = y.detach().bool().cpu()
    a = balanced_weights(y)
    torch.manual_seed(seed)
    probe = Probe(x.shape[1], kind, hidden)
    _standardise(probe, x)
    if kind == "logistic":
        return _fit_logistic(probe, x, y, a, l2, max_iter)
    return _fit_mlp(probe, x, y, a, l2, epochs, batch_size, lr, seed)


def _fit_logistic(probe: Probe, x, y, a, l2: float, max_iter: int) -> ProbeFit:
    dt = torch.float64 if x.numel() <= 5e7 else torch.float32
    z = (x.to(dt) - probe.mean.to(dt)) / probe.std.to(dt)
    w = torch.zeros(z.shape[1], dtype=dt, requires_grad=True)
    b = torch.zeros((), dtype=dt, requires_grad=True)
    yf = y.to(dt)
    a = a.to(dt)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")
    calls = [0]

    def objective():
        logits = z @ w + b
        loss = (a * nn.functional.binary_cross_entropy_with_logits(logits, yf, reduction="none")).sum()
        return loss + 0.5 * l2 * (w * w).sum()

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        calls[0] += 1
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = float(objective())
        probe.head.weight.copy_(w.detach().float().unsqueeze(0))
        probe.head.bias.copy_(b.detach().float().reshape(1))
    return ProbeFit(probe.eval(), loss, calls[0])


def _fit_mlp(probe: Probe, x, y, a, l2: float, epochs: int, batch_size: int, lr: float, seed: int) -> ProbeFit:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(probe.head.parameters(), lr=lr, weight_decay=0.0)
    n = x.shape[0]
    steps_per_epoch = max(1, n // batch_size)
    yf = y.float()
    probe.train()
    steps = 0
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            idx = torch.multinomial(a, batch_size, replacement=True, generator=gen)  # class-balanced draws
            logits = probe(x[idx])
            loss = nn.functional.binary_cross_entropy_with_logits(logits, yf[idx])
            loss = loss + 0.5 * l2 * sum((p * p).sum() for p in probe.penalised())
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    probe.eval()
    with torch.no_grad():
        logits = probe(x)
        full = (a.float() * nn.functional.binary_cross_entropy_with_logits(logits, yf, reduction="none")).sum()
    return ProbeFit(probe, float(full), steps)
