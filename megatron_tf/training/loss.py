"""The training objective: masked cross-entropy summed over tokens, divided by the GLOBAL count of learned tokens.

    L = sum_{microbatches m, DP ranks r, positions i} w_{m,r,i} CE_{m,r,i}  /  max(1, sum_{m,r,i} w_{m,r,i})

w = loss_mask (0 on forget targets with --token-filter mask/remove, 0 after <|endoftext|> with --eod-mask-loss).
The denominator is computed once per step from the microbatches' loss masks (on the host, before the batch moves
to the device) and all-reduced over the data-parallel group BEFORE any backward pass, so every microbatch is
weighted by the same 1/count: microbatches with different numbers of learned tokens give exactly the full-batch
loss, and a fully masked batch gives 0 (not 0/0 = NaN). Never a per-microbatch mean.

Data parallelism averages gradients over the DP ranks (DDP, DeepSpeed), so each rank back-propagates
dp_size * (its local sum) / count: the average over ranks is sum / count, the single-process full-batch gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_tf.ops import cross_entropy as _fused_ce
from megatron_tf.parallel.cross_entropy import cross_entropy_loss_and_grad, vocab_parallel_cross_entropy


def local_learned_tokens(batches: list[dict]) -> float:
    """Sum of the loss masks of this rank's microbatches (host tensors: no device synchronisation)."""
    return float(sum(float(b["loss_mask"].sum(dtype=torch.float64)) for b in batches))


def global_count(local_count: float, dp_group, device: torch.device) -> torch.Tensor:
    """The learned-token count of the global batch: a float64 device tensor, all-reduced over DP."""
    t = torch.tensor([local_count], dtype=torch.float64, device=device)
    if dp_group is not None:
        dist.all_reduce(t, group=dp_group)
    return t


def loss_scale(count: torch.Tensor, dp_size: int) -> torch.Tensor:
    """dp_size / max(1, count), fp32 device tensor [1]."""
    return (float(dp_size) / count.clamp(min=1.0)).float()


def use_one_pass(impl: str, tp_size: int, device: torch.device, dtype: torch.dtype) -> bool:
    """The fused kernel's one-pass loss+gradient is used with TP = 1 when the fused implementation is selected."""
    return tp_size == 1 and device.type == "cuda" and _fused_ce.select_impl(impl, device, dtype) == "fused"


def microbatch_objective(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, scale: torch.Tensor,
                         tp_group=None, impl: str = "auto", label_smoothing: float = 0.0, one_pass: bool = False):
    """(backward handle (tensor, grad or None), detached sum of the per-token losses of this microbatch).

    Backward with `torch.autograd.backward(*handle)`: the gradient is that of scale * sum_i w_i CE_i."""
    if one_pass:
        per_token, grad = cross_entropy_loss_and_grad(logits, labels, loss_mask, scale, tp_group, impl,
                                                      label_smoothing, inplace=True)
        return (logits, grad), per_token.sum()
    per_token = vocab_parallel_cross_entropy(logits, labels, loss_mask, tp_group, impl, label_smoothing)
    total = per_token.sum()
    return (total * scale.to(total.dtype).squeeze(), None), total.detach()
