"""In-process API of the trainer (the demo and scripts that launch training).

    from megatron_tf.training import pretrain

    result = pretrain(["--num-layers", "2", ..., "--save", "runs/x"])      # same flags as pretrain_gpt.py
    result.losses, result.tokens_learned, result.final_eval()             # TrainResult (loop.py)

Code that only uses a trained model loads it with megatron_tf.checkpoint.load_model (no trainer import);
load_model_from_checkpoint below is the same with the run's configs parsed into the trainer's Configs.

`pretrain` runs in the calling process: a single process needs no launcher; under torchrun / deepspeed (or inside
an initialised default process group) every rank calls it. It initialises torch.distributed only when WORLD_SIZE >
1 and no group exists, and then destroys it at the end.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist

from megatron_tf.checkpoint.load import load_model
from megatron_tf.utils.logging import get_logger

from .arguments import Configs, parse_args
from .divergence import TrainingDiverged
from .loop import Trainer, TrainResult

log = get_logger(__name__)


def pretrain(args: list[str] | Configs | None = None, *, setup_hook=None) -> TrainResult:
    """Train with the given flags (a list like sys.argv[1:]) or Configs; returns the TrainResult.
    `setup_hook(trainer)` runs after everything is built, before the first step (tests use it to hook modules)."""
    cfgs = args if isinstance(args, Configs) else parse_args(args)
    trainer = None
    initialized_before = dist.is_available() and dist.is_initialized()
    try:
        trainer = Trainer(cfgs, setup_hook)
        return trainer.train()
    finally:
        if not initialized_before and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


class TrainerLoadedModel(NamedTuple):
    model: torch.nn.Module
    configs: Configs
    tokenizer: object | None


def load_model_from_checkpoint(path: str, device: str | torch.device = "cpu", ckpt_step: int | None = None,
                               dtype: torch.dtype = torch.float32) -> TrainerLoadedModel:
    """(model, configs, tokenizer): megatron_tf.checkpoint.load_model with the saved configs as the trainer's
    Configs (configs.model with vocab_size set; the model's own config is model.config)."""
    m = load_model(path, device=device, ckpt_step=ckpt_step, dtype=dtype)
    return TrainerLoadedModel(m.model, Configs.from_dict(m.run.configs), m.tokenizer)


def main(argv: list[str] | None = None) -> int:
    """pretrain_gpt.py: exit status 0, or 1 when training diverged (the divergence guard's error is logged)."""
    try:
        pretrain(argv)
    except TrainingDiverged as e:
        log.error("training stopped: %s", e)
        return 1
    return 0
