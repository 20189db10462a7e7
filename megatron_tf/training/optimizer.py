"""AdamW with weight-decay groups, the implementation choice, and gradient clipping by the global norm.

Weight decay (Loshchilov & Hutter 2019, decoupled) applies to matrices only: norm weights and every other 1-D
parameter go to a no-decay group (Megatron's rule for biases and norms; there are no biases here).

Implementation (`--optimizer-impl auto`, logged): on CUDA NVIDIA apex's FusedAdam (adam_w_mode) when
`apex.optimizers` imports, else torch.optim.AdamW(fused=True); on CPU torch.optim.AdamW(foreach=True).

Global gradient norm over all model-parallel ranks (Megatron's get_grad_norm_fp32):

    ||g||^2 = sum over tensor-parallel shards (every TP rank)      partitioned weights: each rank holds a slice
            + sum over replicated params on TP rank 0 only           norms: identical copies, counted once
            ; all-reduced over the model-parallel group (TP x PP)    each stage holds different layers
            ; the tied embedding copy on the last stage (PP > 1) is skipped (the first stage counts it)

Data-parallel replicas hold equal (already averaged) gradients, so the norm is not reduced over DP. Sequence-
parallel norm gradients and tied-embedding gradients must be summed BEFORE (the trainer does). Clipping multiplies
every gradient by min(1, clip / (norm + 1e-6)) on the device (no host synchronisation), as
torch.nn.utils.clip_grad_norm_ does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from megatron_tf.config.cli import opt
from megatron_tf.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class OptimizerConfig:
    """AdamW and gradient clipping (Megatron-LM's flags)."""

    weight_decay: float = field(default=0.01, metadata=opt("Decoupled weight decay of the matrices."))
    adam_beta1: float = field(default=0.9, metadata=opt("Adam beta1."))
    adam_beta2: float = field(default=0.999, metadata=opt("Adam beta2."))
    adam_eps: float = field(default=1e-8, metadata=opt("Adam epsilon."))
    clip_grad: float = field(default=1.0, metadata=opt("Clip gradients to this global L2 norm (0 = no clipping)."))
    optimizer_impl: str = field(default="auto", metadata=opt(
        "AdamW implementation: auto (apex FusedAdam on CUDA if importable, else torch fused; torch foreach on "
        "CPU), apex, torch-fused, torch-foreach.", choices=("auto", "apex", "torch-fused", "torch-foreach")))

    def __post_init__(self):
        if self.weight_decay < 0 or self.clip_grad < 0 or self.adam_eps <= 0:
            raise ValueError("OptimizerConfig: --weight-decay, --clip-grad must be >= 0 and --adam-eps > 0")
        for b in (self.adam_beta1, self.adam_beta2):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"OptimizerConfig: Adam betas must be in [0, 1), got {b}")


def param_groups(model: nn.Module, weight_decay: float) -> tuple[list[dict], list[str]]:
    """([decay group, no-decay group], parameter names in the order the groups list them)."""
    decay, no_decay, names_d, names_n = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2:
            no_decay.append(p)
            names_n.append(name)
        else:
            decay.append(p)
            names_d.append(name)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return groups, names_d + names_n


@functools.cache
def _apex_fused_adam():
    try:
        from apex.optimizers import FusedAdam  # NVIDIA apex only (the PyPI 'apex' has no such module)
    except Exception:
        return None
    return FusedAdam


def resolve_impl(impl: str, device: torch.device) -> str:
    if impl == "auto":
        if device.type == "cuda":
            return "apex" if _apex_fused_adam() is not None else "torch-fused"
        return "torch-foreach"
    if impl == "apex" and _apex_fused_adam() is None:
        raise RuntimeError("--optimizer-impl apex: NVIDIA apex (apex.optimizers.FusedAdam) is not importable")
    return impl


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, lr: float, device: torch.device):
    """(optimizer, parameter names in group order, implementation name)."""
    groups, names = param_groups(model, cfg.weight_decay)
    impl = resolve_impl(cfg.optimizer_impl, device)
    kw = dict(lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    if impl == "apex":
        opt_ = _apex_fused_adam()(groups, adam_w_mode=True, **kw)
    elif impl == "torch-fused":
        opt_ = torch.optim.AdamW(groups, fused=True, **kw)
    else:
        opt_ = torch.optim.AdamW(groups, foreach=True, **kw)
    log.info("optimizer: AdamW (%s), %d decay / %d no-decay tensors", impl, len(groups[0]["params"]),
             len(groups[1]["params"]))
    return opt_, names, impl


def set_lr(optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def norm_params(model: nn.Module, tp_rank: int, skip_shared_embedding: bool) -> list[nn.Parameter]:
    """The parameters whose gradients this rank counts in the global norm (see the module docstring)."""
    shared = model.shared_embedding_weight() if skip_shared_embedding and hasattr(model, "shared_embedding_weight") \
        else None
    out = []
    for p in model.parameters():
        if shared is not None and p is shared:
            continue
        if getattr(p, "tensor_model_parallel", False) or tp_rank == 0:
            out.append(p)
    return out


def global_grad_norm(params: list[nn.Parameter], model_parallel_group=None) -> torch.Tensor:
    """sqrt of the sum of squared gradient entries of `params` over the model-parallel group (fp32 device
    tensor; 0 when there are no gradients)."""
    grads = [p.grad for p in params if p.grad is not None]
    device = grads[0].device if grads else (params[0].device if params else torch.device("cpu"))
    if grads:
        norms = torch._foreach_norm(grads, 2.0)
        sq = torch.stack([n.float() for n in norms]).pow(2).sum()
    else:
        sq = torch.zeros((), device=device, dtype=torch.float32)
    if model_parallel_group is not None and dist.is_initialized():
        dist.all_reduce(sq, group=model_parallel_group)
    return sq.sqrt()


def clip_grads_(params: list[nn.Parameter], total_norm: torch.Tensor, max_norm: float) -> None:
    """g *= min(1, max_norm / (total_norm + 1e-6)) for every gradient (on the device)."""
    if max_norm <= 0:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    coef = (max_norm / (total_norm + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, coef.to(grads[0].device))
