"""Learning-rate schedule: linear warmup, then constant / linear / cosine / inverse-square-root decay to --min-lr.

Megatron-LM's OptimizerParamScheduler rule, as a pure function of the progress p (iterations, or learned tokens
with --train-tokens) made BEFORE the step whose lr is asked for (so step 1 runs at lr(0)):

    p <= W (W > 0):    lr = init + (max - init) * p / W                         init = --lr-warmup-init (0)
    p >  D:            lr = min
    style constant:    lr = max
    otherwise r = (p - W) / (D - W) and
        linear:        lr = min + (max - min) * (1 - r)
        cosine:        lr = min + (max - min) * 0.5 * (cos(pi * r) + 1)
        inverse-square-root: lr = max(min, max * sqrt(W) / sqrt(max(p, 1)))

W = --lr-warmup-iters (or --lr-warmup-fraction x D), D = --lr-decay-iters (default --train-iters). In token mode
(--train-tokens given) p counts learned tokens, W = --lr-warmup-tokens (or the fraction x D, or
--lr-warmup-iters x global batch x seq length), D = --lr-decay-tokens (default --train-tokens): every filter arm
then decays over the same learned-token budget. Worked example (max 1e-3, min 1e-4, W 10, D 110, cosine):
lr(5) = 5e-4, lr(10) = 1e-3, lr(60) = 1e-4 + 9e-4 * 0.5 = 5.5e-4, lr(110) = 1e-4, lr(200) = 1e-4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from megatron_tf.config.cli import opt

DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root")


@dataclass
class LRScheduleConfig:
    """Learning rate and its schedule (Megatron-LM's flags)."""

    lr: float = field(default=3e-4, metadata=opt("Peak learning rate."))
    min_lr: float = field(default=0.0, metadata=opt("Floor of the decayed learning rate."))
    lr_warmup_init: float = field(default=0.0, metadata=opt("Learning rate at the start of the warmup."))
    lr_warmup_iters: int = field(default=0, metadata=opt("Linear warmup iterations."))
    lr_warmup_fraction: float | None = field(default=None, metadata=opt(
        "Warmup as a fraction of the decay span (overrides --lr-warmup-iters / --lr-warmup-tokens)."))
    lr_decay_iters: int | None = field(default=None, metadata=opt("Decay span in iterations (default --train-iters)."))
    lr_decay_style: str = field(default="cosine", metadata=opt("Decay shape.", choices=DECAY_STYLES))
    lr_warmup_tokens: int | None = field(default=None, metadata=opt(
        "Token mode (--train-tokens): warmup span in learned tokens (Megatron-DeepSpeed's flag)."))
    lr_decay_tokens: int | None = field(default=None, metadata=opt(
        "Token mode: decay span in learned tokens (default --train-tokens)."))

    def __post_init__(self):
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"LRScheduleConfig: need 0 <= --min-lr ({self.min_lr}) <= --lr ({self.lr}), --lr > 0")
        if self.lr_warmup_iters < 0:
            raise ValueError(f"--lr-warmup-iters must be >= 0, got {self.lr_warmup_iters}")
        if self.lr_warmup_fraction is not None and not 0.0 <= self.lr_warmup_fraction <= 1.0:
            raise ValueError(f"--lr-warmup-fraction must be in [0, 1], got {self.lr_warmup_fraction}")
        if self.lr_decay_style not in DECAY_STYLES:
            raise ValueError(f"--lr-decay-style must be one of {DECAY_STYLES}, got {self.lr_decay_style!r}")


@dataclass(frozen=True)
class LRSchedule:
    """lr(progress) with resolved spans. unit: 'iterations' or 'tokens'."""

    max_lr: float
    min_lr: float
    init_lr: float
    warmup: float
    decay: float
    style: str
    unit: str

    def __call__(self, progress: float) -> float:
        p = float(progress)
        if self.warmup > 0 and p <= self.warmup:
            return self.init_lr + (self.max_lr - self.init_lr) * p / self.warmup
        if self.style == "constant":
            return self.max_lr
        if self.style == "inverse-square-root":
            w = max(self.warmup, 1.0)
            return max(self.min_lr, self.max_lr * math.sqrt(w) / math.sqrt(max(p, 1.0)))
        if p > self.decay:
            return self.min_lr
        r = (p - self.warmup) / max(self.decay - self.warmup, 1e-12)
        if self.style == "linear":
            coeff = 1.0 - r
        else:  # cosine
            coeff = 0.5 * (math.cos(math.pi * r) + 1.0)
        return self.min_lr + (self.max_lr - self.min_lr) * coeff

    def describe(self) -> str:
        return (f"lr {self.style}: {self.init_lr:g} -> {self.max_lr:g} over {self.warmup:g} {self.unit}, "
                f"-> {self.min_lr:g} at {self.decay:g} {self.unit}")


def build_lr_schedule(cfg: LRScheduleConfig, train_iters: int | None, train_tokens: int | None,
                      tokens_per_iteration: int) -> LRSchedule:
    """Resolve the spans (see the module docstring). tokens_per_iteration = global batch x seq length."""
    if train_tokens is not None:
        decay = cfg.lr_decay_tokens or train_tokens
        if cfg.lr_warmup_fraction is not None:
            warmup = cfg.lr_warmup_fraction * decay
        elif cfg.lr_warmup_tokens is not None:
            warmup = cfg.lr_warmup_tokens
        else:
            warmup = cfg.lr_warmup_iters * tokens_per_iteration
        unit = "tokens"
    else:
        decay = cfg.lr_decay_iters or train_iters
        warmup = cfg.lr_warmup_fraction * decay if cfg.lr_warmup_fraction is not None else cfg.lr_warmup_iters
        unit = "iterations"
    if warmup > decay and cfg.lr_decay_style not in ("constant", "inverse-square-root"):
        raise ValueError(f"LR warmup ({warmup:g} {unit}) is longer than the decay span ({decay:g} {unit})")
    return LRSchedule(cfg.lr, cfg.min_lr, cfg.lr_warmup_init, float(warmup), float(decay), cfg.lr_decay_style, unit)
