"""In-process API for other code (the demo, evaluation, attacks).

    from megatron_tf.training import pretrain, load_model_from_checkpoint

    result = pretrain(["--num-layers", "2", ..., "--save", "runs/x"])      # same flags as pretrain_gpt.py
    result.losses, result.tokens_learned, result.final_eval()             # TrainResult (loop.py)

    model, configs, tokenizer = load_model_from_checkpoint("runs/x")      # one process, TP/PP shards merged
    logits = model(input_ids=ids)                                         # [b, s, V_padded] (full vocabulary)

`pretrain` runs in the calling process: a single process needs no launcher; under torchrun / deepspeed (or inside
an initialised default process group) every rank calls it. It initialises torch.distributed only when WORLD_SIZE >
1 and no group exists, and then destroys it at the end.
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import torch
import torch.distributed as dist

from megatron_tf.model.config import ModelConfig
from megatron_tf.model.gpt import GPTModel
from megatron_tf.model.hf_export import merge_pp_state_dicts, merge_tp_state_dicts
from megatron_tf.tokenizer.tokenizer import build_tokenizer
from megatron_tf.utils.logging import get_logger

from . import checkpoint as ckpt
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


class LoadedModel(NamedTuple):
    model: GPTModel
    configs: Configs
    tokenizer: object | None


def merged_state_dict(ckpt_dir: str) -> tuple[dict[str, torch.Tensor], ModelConfig, dict]:
    """(full TP=1, PP=1 state dict, its ModelConfig, config.json) of a checkpoint directory."""
    config = ckpt.read_json(os.path.join(ckpt_dir, "config.json"))
    mcfg = ModelConfig.from_dict(config["configs"]["model"])
    tp = config["parallel"]["tensor_model_parallel_size"]
    pp = config["parallel"]["pipeline_model_parallel_size"]
    stages = []
    for p in range(pp):
        shards = [ckpt.load_model_shard(ckpt_dir, t, p) for t in range(tp)]
        stages.append(merge_tp_state_dicts(shards, mcfg) if tp > 1 else shards[0])
    # the padded vocabulary depends on the TP size it was trained with: keep it in the single-process model
    full_cfg = dataclasses.replace(mcfg, make_vocab_size_divisible_by=mcfg.make_vocab_size_divisible_by * tp,
                                   sequence_parallel=False)
    return merge_pp_state_dicts(stages), full_cfg, config


def load_model_from_checkpoint(path: str, device: str | torch.device = "cpu", ckpt_step: int | None = None,
                               dtype: torch.dtype = torch.float32) -> LoadedModel:
    """The whole model of a checkpoint in one process (TP shards merged, PP stages joined), in eval mode.

    `path`: a --save directory (its `latest`, or iteration ckpt_step) or an iter_* directory. Returns
    (model, configs, tokenizer): configs are the run's Configs (configs.model with vocab_size set; the returned
    model's make_vocab_size_divisible_by is multiplied by the saved TP size so its padded vocabulary is the
    checkpoint's); tokenizer is None (with a warning) if its file is no longer where training found it."""
    ckpt_dir = ckpt.resolve_checkpoint_dir(path, ckpt_step)
    if ckpt_dir is None:
        raise ckpt.CheckpointError(f"{path}: no checkpoint (no `latest` file and not an iter_* directory)")
    sd, full_cfg, config = merged_state_dict(ckpt_dir)
    model = GPTModel(full_cfg, None, device=torch.device("meta"))
    model = model.to_empty(device=device)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ckpt.CheckpointError(f"{ckpt_dir}: merged weights do not fit the model (missing {missing[:4]}, "
                                   f"unexpected {unexpected[:4]})")
    model = model.to(dtype).eval()
    cfgs = Configs.from_dict(config["configs"])
    try:
        tc = cfgs.tokenizer
        tokenizer = build_tokenizer(tc.tokenizer_type, tc.tokenizer_model, tc.vocab_size)
    except Exception as e:  # the tokenizer file moved: the weights are still usable
        log.warning("%s: cannot rebuild the tokenizer (%s); returning None", ckpt_dir, e)
        tokenizer = None
    return LoadedModel(model, cfgs, tokenizer)


def main(argv: list[str] | None = None) -> int:
    """pretrain_gpt.py: exit status 0, or 1 when training diverged (the divergence guard's error is logged)."""
    try:
        pretrain(argv)
    except TrainingDiverged as e:
        log.error("training stopped: %s", e)
        return 1
    return 0
