"""Trainer configs: what to train for how long (TrainingConfig).

`--seq-length` and `--seed` live here and are copied into the model config (max_position_embeddings default) and
the data config (`dataclasses.replace(data_cfg, seq_length=..., seed=...)`), as Megatron-LM shares them.
Other configs sit next to what they configure: OptimizerConfig (optimizer.py), LRScheduleConfig (lr_schedule.py),
CheckpointConfig (resume.py), TokenizerConfig (tokenizer/config.py), LoggingConfig (metrics.py), DeepSpeedConfig
(deepspeed_engine.py), EvalConfig (validation.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from megatron_tf.config.cli import opt

TRAIN_TOKEN_COUNTS = ("learned", "seen")


@dataclass
class TrainingConfig:
    """Batch sizes, run length, precision, seed."""

    seq_length: int = field(default=1024, metadata=opt("Tokens per sample (model inputs)."))
    micro_batch_size: int = field(default=1, metadata=opt("Samples per microbatch per data-parallel rank."))
    global_batch_size: int | None = field(default=None, metadata=opt(
        "Samples per optimizer step over all data-parallel ranks (default: micro batch size x data-parallel size); "
        "must be a multiple of micro_batch_size x data-parallel size (the quotient is the number of microbatches)."))
    train_iters: int | None = field(default=None, metadata=opt(
        "Optimizer steps to run. With --train-tokens too, the run stops at whichever is reached first."))
    train_tokens: int | None = field(default=None, metadata=opt(
        "Stop when this many tokens have been trained on, counted as --train-tokens-count says (default: LEARNED "
        "tokens, the unmasked target tokens summed over all ranks, so filtered arms learn as many tokens as the "
        "baseline). The LR schedule then runs on that count."))
    train_tokens_count: str = field(default="learned", metadata=opt(
        "What --train-tokens counts: learned (unmasked target tokens: a mask/remove arm runs more steps and sees "
        "more tokens than the baseline) or seen (every input token, global batch x seq length per step: every arm "
        "gets the same steps and compute).", choices=TRAIN_TOKEN_COUNTS))
    exit_interval: int | None = field(default=None, metadata=opt(
        "Exit (after saving a checkpoint) once the iteration is a multiple of this value."))
    seed: int = field(default=1234, metadata=opt(
        "Seed of the weight init, the data shuffle and the dropout generators."))
    bf16: bool = field(default=False, metadata=opt(
        "bf16 autocast on CUDA (parameters and optimizer state stay fp32). Ignored on CPU (fp32), with a log line."))
    device: str = field(default="auto", metadata=opt(
        "cuda (one GPU per process: LOCAL_RANK), cpu, or auto (cuda when available).",
        choices=("auto", "cuda", "cpu")))
    distributed_backend: str = field(default="auto", metadata=opt(
        "torch.distributed backend: nccl on CUDA, gloo on CPU (auto).", choices=("auto", "nccl", "gloo")))
    distributed_timeout_minutes: int = field(default=10, metadata=opt("Timeout of collectives (minutes)."))
    flush_denormal: bool = field(default=True, metadata=opt(
        "On CPU, flush denormal floats to zero (torch.set_flush_denormal): denormals from softmax tails made a "
        "tiny model's steps up to 70x slower on this x86 VM (benchmarks/bench_train.py)."))
    label_smoothing: float = field(default=0.0, metadata=opt(
        "Label smoothing of the cross-entropy (torch's definition; 0 = none)."))
    skip_nonfinite_steps: int = field(default=0, metadata=opt(
        "Divergence guard: a step whose loss or gradient norm is NaN/inf is never applied and stops the run "
        "(exit status 1); up to N such steps over the run are skipped instead (logged) (training/divergence.py)."))

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"TrainingConfig: {msg}")

        for name in ("seq_length", "micro_batch_size"):
            if getattr(self, name) < 1:
                bad(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("global_batch_size", "train_iters", "train_tokens", "exit_interval"):
            v = getattr(self, name)
            if v is not None and v < 1:
                bad(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if self.train_iters is None and self.train_tokens is None:
            bad("give --train-iters or --train-tokens")
        if self.train_tokens_count not in TRAIN_TOKEN_COUNTS:
            bad(f"--train-tokens-count must be one of {TRAIN_TOKEN_COUNTS}, got {self.train_tokens_count!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            bad(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.skip_nonfinite_steps < 0:
            bad(f"--skip-nonfinite-steps must be >= 0, got {self.skip_nonfinite_steps}")

    def token_budget_samples(self, gbs: int, learned_fraction) -> int:
        """Train samples to build for --train-tokens: seen tokens give the step count exactly (ceil(budget / (gbs x
        seq_length)) steps); learned tokens an estimate, 10% + one step over budget / (gbs x seq_length x f), where
        f = learned_fraction(probe samples) is measured on the data (the build is cut to the data's length)."""
        per_step = gbs * self.seq_length
        steps = math.ceil(self.train_tokens / per_step)
        if self.train_tokens_count == "seen":
            return steps * gbs
        keep = learned_fraction(steps * gbs)
        return (math.ceil(self.train_tokens / (per_step * keep) * 1.1) + 1) * gbs

    def num_microbatches(self, dp_size: int) -> int:
        gbs = self.global_batch_size or self.micro_batch_size * dp_size
        per_step = self.micro_batch_size * dp_size
        if gbs % per_step:
            raise ValueError(f"--global-batch-size {gbs} is not a multiple of --micro-batch-size "
                             f"{self.micro_batch_size} x data-parallel size {dp_size} = {per_step}")
        return gbs // per_step

    def resolved_global_batch_size(self, dp_size: int) -> int:
        return self.micro_batch_size * dp_size * self.num_microbatches(dp_size)
