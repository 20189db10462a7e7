"""Megatron-style weight init, deterministic given a seed and independent of the TP and PP layout.

    norms                                  weight = 1
    linear_proj, linear_fc2 (outputs of    N(0, (std / sqrt(2 * num_layers))^2)   Megatron's scaled_init_method_normal
    the residual branches)                                                        (GPT-2's residual scaling)
    everything else (embedding, qkv,       N(0, std^2), std = --init-method-std
    fc1, output layer)

Every parameter gets its own CPU generator seeded from sha256(f"{seed}:{name}") and draws its FULL (TP=1) tensor;
each rank keeps its shard (megatron_tf.parallel.layers.shard_tensor). Parameter names are global (a pipeline stage
holding layers 4..7 names them decoder.layers.4 ..), so a TP=2 or a PP=2 model starts exactly equal to the TP=1
model, and a tied embedding on the last stage equals the first stage's. Cost: every rank draws the full tensors
(about 1 s per 10^8 parameters on one CPU core).
"""

from __future__ import annotations

import hashlib
import math

import torch

from megatron_tf.parallel.groups import group_size
from megatron_tf.parallel.layers import copy_full_

SCALED_INIT_SUFFIXES = ("linear_proj.weight", "linear_fc2.weight")
ONES_INIT_SUFFIXES = ("layernorm.weight",)


def param_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def full_shape(param: torch.Tensor, tp_size: int) -> list[int]:
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= tp_size
    return shape


def init_std(name: str, config) -> float | None:
    """The init std of a parameter by name; None for ones-initialised norms."""
    if name.endswith(ONES_INIT_SUFFIXES):
        return None
    if name.endswith(SCALED_INIT_SUFFIXES):
        return config.init_method_std / math.sqrt(2.0 * config.num_layers)
    return config.init_method_std


@torch.no_grad()
def init_gpt_weights(model, seed: int) -> None:
    """(Re-)initialise every parameter of a GPTModel stage from `seed` (see the module docstring)."""
    tp = group_size(model.tp_group)
    for name, p in model.named_parameters():
        std = init_std(name, model.config)
        if std is None:
            p.fill_(1.0)
            continue
        g = torch.Generator().manual_seed(param_seed(seed, name))
        full = torch.empty(full_shape(p, tp), dtype=torch.float32).normal_(0.0, std, generator=g)
        copy_full_(p, full.to(p.dtype), model.tp_group)
