"""What `pretrain` returns (training/loop.py fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainResult:
    """What `pretrain` returns (on every rank; losses are global)."""

    iteration: int
    consumed_samples: int
    tokens_seen: int
    tokens_learned: int
    stopped_by: str  # "train_iters", "train_tokens" or "exit_interval"
    iterations: list[int] = field(default_factory=list)  # every iteration trained in this call
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    learned_per_step: list[int] = field(default_factory=list)
    skipped_nonfinite: list[int] = field(default_factory=list)  # iterations skipped by --skip-nonfinite-steps
    evals: list[dict] = field(default_factory=list)  # {"iteration", "name", "loss", "tokens", ...}
    save_dir: str | None = None
    last_checkpoint: str | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None

    def final_eval(self) -> dict[str, float]:
        """{name: loss} of the last evaluation."""
        out = {}
        for rec in self.evals:
            out[rec["name"]] = rec["loss"]
        return out
