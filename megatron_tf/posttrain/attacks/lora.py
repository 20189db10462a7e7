"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685) for GPTModel.

    names = add_lora(model, rank=8, alpha=16, targets=("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"))
    ... train: only the lora_A / lora_B tensors require gradients ...
    merge_lora(model)      # W <- W + (alpha / r) B A, adapters removed: the original module tree and names

A target linear layer y = x W^T becomes y = x W^T + (alpha / r) (x A^T) B^T with A [r, in] ~ N(0, 1/r) (seeded)
and B [out, r] = 0, so the adapted model starts equal to the base model. The wrapped module keeps the original
layer as `.base`; parameter names become `<layer>.base.weight`, `<layer>.lora_A`, `<layer>.lora_B` while attached.
Whole models only (TP = 1): a tensor-parallel adapter would need the shard layout of every target.
"""

from __future__ import annotations

import math

import torch
from torch import nn

DEFAULT_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        w = base.weight
        out_f, in_f = w.shape
        self.base = base
        self.rank, self.scale = rank, alpha / rank
        a = torch.randn(rank, in_f, generator=generator, dtype=torch.float32) / math.sqrt(rank)
        self.lora_A = nn.Parameter(a.to(device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_f, rank, device=w.device, dtype=w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + nn.functional.linear(nn.functional.linear(x, self.lora_A), self.lora_B) * self.scale

    def delta(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scale


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, targets=DEFAULT_TARGETS, seed: int = 0
             ) -> list[str]:
    """Wrap every decoder linear whose attribute name is in `targets`; freeze everything else. Returns the
    wrapped module names."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if getattr(model, "tp_size", 1) != 1:
        raise ValueError("LoRA here needs a whole model (TP = 1): load it with megatron_tf.checkpoint.load_checkpoint")
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if child_name in targets and not isinstance(child, LoRALinear) and hasattr(child, "weight"):
                setattr(mod, child_name, LoRALinear(child, rank, alpha, g))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    if not wrapped:
        raise ValueError(f"LoRA: no module named any of {list(targets)} in the model")
    return wrapped


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.endswith(".lora_A") or n.endswith(".lora_B")]


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight and restore the original modules; returns how many were merged.
    Every parameter requires gradients again afterwards."""
    n = 0
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, LoRALinear):
                child.base.weight.add_(child.delta().to(child.base.weight.dtype))
                setattr(mod, child_name, child.base)
                n += 1
    for p in model.parameters():
        p.requires_grad_(True)
    return n
