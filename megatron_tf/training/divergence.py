"""Divergence guard (Megatron-LM's check for NaN in the loss and the gradient norm).

Every step, before the optimizer update, the trainer checks that the step's global loss and global gradient norm
are finite. The flag is all-reduced (MAX) over every rank, so TP, PP, DP and DeepSpeed ranks all take the same
decision. A non-finite step is never applied: its gradients are dropped (DeepSpeed's ZeRO optimizer skips an
update with a non-finite gradient norm itself, as its fp32 overflow check). `--skip-nonfinite-steps N` lets up to
N such steps be skipped over the run (each logged; the iteration and its data are consumed, its learned tokens
are not counted); one more stops the run with TrainingDiverged, which pretrain_gpt.py turns into exit status 1.
Checkpoints are never written from a diverged state (checkpoint/format.py also refuses non-finite tensors).

Cost: one scalar all-reduce and one device->host transfer per step (the decision must reach the host before the
update; Megatron-LM and torch's GradScaler synchronise the same way).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from megatron_tf.utils.logging import get_logger

log = get_logger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stopped being finite (more often than --skip-nonfinite-steps allows)."""


def nonfinite_step(loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
    """True on every rank when any rank's loss or gradient norm is NaN or infinite (collective over the world)."""
    bad = (~torch.isfinite(loss.double()) | ~torch.isfinite(grad_norm.double())).double().reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bool(bad.item() > 0)


class DivergenceGuard:
    """Counts skipped non-finite steps and raises once more than `max_skips` occurred."""

    def __init__(self, max_skips: int, rank: int = 0):
        self.max_skips = max_skips
        self.rank = rank
        self.skipped: list[int] = []

    def on_nonfinite(self, iteration: int, loss: float, grad_norm: float, applied: bool,
                     last_checkpoint: str | None) -> None:
        """Record a non-finite step (its update was not applied unless `applied`); raise when over the limit."""
        what = f"iteration {iteration}: loss {loss!r}, gradient norm {grad_norm!r}"
        ckpt = (f"the last checkpoint ({last_checkpoint}) predates it and `latest` still names it"
                if last_checkpoint else "no checkpoint was saved from it")
        if applied:  # DeepSpeed applied an update with a finite gradient norm although the loss was not finite
            raise TrainingDiverged(f"{what}: the loss is not finite and DeepSpeed has already applied the update "
                                   f"(its gradient norm was finite); stopping; {ckpt}")
        self.skipped.append(iteration)
        if len(self.skipped) > self.max_skips:
            raise TrainingDiverged(
                f"{what} is not finite: training diverged (non-finite steps so far: {self.skipped}, "
                f"--skip-nonfinite-steps {self.max_skips}); the update was not applied and {ckpt}. Lower --lr, "
                "clip gradients (--clip-grad), check the data, or allow skipping a few such steps with "
                "--skip-nonfinite-steps N")
        if self.rank == 0:
            log.warning("%s is not finite: update skipped (%d of at most %d skipped steps, "
                        "--skip-nonfinite-steps)", what, len(self.skipped), self.max_skips)


def is_finite(x: float) -> bool:
    return math.isfinite(x)
