"""Per-row statistics of the vocab-parallel cross-entropy and their combine across tensor-parallel ranks.

Each TP rank holds the logits of a vocabulary shard and summarises every row in K floats:
``(lse_r, x_t, [sum_x])`` = log-sum-exp of the shard, the target logit if the target falls in this shard (else 0),
and, only with label smoothing, the sum of the shard's logits. One all-gather of these (8 bytes per row and rank, 12
with smoothing) replaces Megatron's three all-reduces (max, target logit, sum-exp); each rank then combines locally:

    lse  = log(sum_r exp(lse_r))            x_t = sum_r x_t,r            S = sum_r sum_x,r
    loss = lse - (1 - eps) * x_t - eps * S / V_full        (torch's label smoothing over the FULL vocabulary)

Worked example (V_full = 4, two shards, target id 2): shard 0 holds logits [1, 2], shard 1 holds [3, 0].
Rank 0: lse_0 = log(e^1 + e^2) = 2.3133, x_t = 0. Rank 1: lse_1 = log(e^3 + e^0) = 3.0486, x_t = 3.
lse = log(e^2.3133 + e^3.0486) = 3.4402 = log(e^1 + e^2 + e^3 + e^0); loss = 3.4402 - 3 = 0.4402.

Pure PyTorch and free of host synchronisation; shared by the fused kernels and the reference implementation.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def group_size_and_rank(group) -> tuple[int, int]:
    """(size, rank) of a process group; (1, 0) for None or when torch.distributed is not initialised."""
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def gather_row_stats(stats: torch.Tensor, group) -> torch.Tensor:
    """All-gather per-row statistics [N, K] from every rank of `group` into [tp, N, K] (rank order).

    One collective of N*K floats per rank. gloo (torch 2.13) and NCCL accept a flat [tp*N, K] output for the
    single-tensor all-gather; it is tried first (all_gather_single where it exists, all_gather_into_tensor before
    it), and a backend that rejects it falls back to the list form of all_gather.
    """
    tp, _ = group_size_and_rank(group)
    if tp == 1:
        return stats.unsqueeze(0)
    stats = stats.contiguous()
    n, k = stats.shape
    flat = torch.empty(tp * n, k, dtype=stats.dtype, device=stats.device)
    single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    try:
        single(flat, stats, group=group)
    except (RuntimeError, NotImplementedError):
        dist.all_gather(list(flat.view(tp, n, k).unbind(0)), stats, group=group)
    return flat.view(tp, n, k)


def combine_row_stats(gathered: torch.Tensor, weights: torch.Tensor, eps: float,
                      vocab_full: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss (weight * loss, exactly 0 where weight == 0) and global lse from gathered [tp, N, K] stats."""
    lse = gathered[0, :, 0] if gathered.shape[0] == 1 else torch.logsumexp(gathered[..., 0], dim=0)
    x_t = gathered[..., 1].sum(0)
    loss = lse - x_t
    if gathered.shape[-1] == 3:  # label smoothing (stats carry the sum of the logits)
        loss = lse - (1.0 - eps) * x_t - (eps / vocab_full) * gathered[..., 2].sum(0)
    loss = torch.where(weights != 0, loss * weights, torch.zeros((), dtype=loss.dtype, device=loss.device))
    return loss, lse
