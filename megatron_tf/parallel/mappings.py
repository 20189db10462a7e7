"""Autograd-aware collectives of Megatron-style tensor and sequence parallelism (the forward/backward pairs).

Every function takes the process group explicitly; a group of size 1 (or None) makes it the identity.

    function                                   forward                         backward
    copy_to_tp_region(x, g)                    identity                        all-reduce
    reduce_from_tp_region(x, g)                all-reduce                      identity
    scatter_to_tp_region(x, g, dim=-1)         keep this rank's chunk of dim   all-gather along dim
    gather_from_tp_region(x, g, dim=-1)        all-gather along dim            keep this rank's chunk
    scatter_to_sequence_parallel_region(x, g)  keep this rank's chunk of dim 0 all-gather along dim 0
    gather_from_sequence_parallel_region(x, g) all-gather along dim 0          reduce-scatter along dim 0
                                                                               (chunk only, if the consumer's
                                                                               gradient is not TP-partial)
    reduce_scatter_to_sequence_parallel_region reduce-scatter along dim 0      all-gather along dim 0

Chunks follow rank order: rank r of the group holds elements [r*n/p, (r+1)*n/p) of the split dimension.
Device-agnostic: NCCL on GPU, gloo on CPU. gloo in torch 2.13 implements all_gather_into_tensor and
reduce_scatter_tensor (checked on this machine); a backend that rejects them falls back to the list forms
(all_gather; all_reduce + chunk for reduce-scatter), with the same result.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_tf.parallel.groups import group_rank, group_size


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    out = x.contiguous().clone()  # never modify the autograd input in place
    dist.all_reduce(out, group=group)
    return out


def _split(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    p = group_size(group)
    n = x.shape[dim]
    if n % p:
        raise ValueError(f"cannot split dimension {dim} of size {n} into {p} equal tensor-parallel chunks")
    return x.narrow(dim, group_rank(group) * (n // p), n // p).contiguous()


def _all_gather(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    p = group_size(group)
    dim = dim % x.dim()
    x = x.contiguous()
    out = torch.empty((p * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    try:
        dist.all_gather_into_tensor(out, x, group=group)
    except (RuntimeError, NotImplementedError, AttributeError):
        dist.all_gather(list(out.chunk(p, 0)), x, group=group)
    if dim == 0:
        return out
    # [p*n0, ...] -> [p, n0, ..., nd, ...] -> concatenate the p pieces along dim
    return torch.cat(out.chunk(p, 0), dim=dim)


def _reduce_scatter(x: torch.Tensor, group) -> torch.Tensor:
    """Sum over the group, then keep this rank's chunk of dim 0."""
    p = group_size(group)
    if x.shape[0] % p:
        raise ValueError(f"cannot reduce-scatter dimension 0 of size {x.shape[0]} over {p} ranks")
    x = x.contiguous()
    out = torch.empty((x.shape[0] // p, *x.shape[1:]), dtype=x.dtype, device=x.device)
    try:
        dist.reduce_scatter_tensor(out, x, group=group)
    except (RuntimeError, NotImplementedError, AttributeError):
        full = _all_reduce(x, group)
        out.copy_(full.chunk(p, 0)[group_rank(group)])
    return out


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, g):
        return _all_reduce(g, ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _ScatterToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _split(x, group, dim)

    @staticmethod
    def backward(ctx, g):
        return _all_gather(g, ctx.group, ctx.dim), None, None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _all_gather(x, group, dim)

    @staticmethod
    def backward(ctx, g):
        return _split(g, ctx.group, ctx.dim), None, None


class _GatherFromSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, tp_partial_grad):
        ctx.group, ctx.tp_partial_grad = group, tp_partial_grad
        return _all_gather(x, group, 0)

    @staticmethod
    def backward(ctx, g):
        if ctx.tp_partial_grad:
            return _reduce_scatter(g, ctx.group), None, None
        return _split(g, ctx.group, 0), None, None


class _ReduceScatterToSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _reduce_scatter(x, group)

    @staticmethod
    def backward(ctx, g):
        return _all_gather(g, ctx.group, 0), None


def copy_to_tp_region(x: torch.Tensor, group) -> torch.Tensor:
    return x if group_size(group) == 1 else _CopyToTP.apply(x, group)


def reduce_from_tp_region(x: torch.Tensor, group) -> torch.Tensor:
    return x if group_size(group) == 1 else _ReduceFromTP.apply(x, group)


def scatter_to_tp_region(x: torch.Tensor, group, dim: int = -1) -> torch.Tensor:
    return x if group_size(group) == 1 else _ScatterToTP.apply(x, group, dim)


def gather_from_tp_region(x: torch.Tensor, group, dim: int = -1) -> torch.Tensor:
    return x if group_size(group) == 1 else _GatherFromTP.apply(x, group, dim)


def scatter_to_sequence_parallel_region(x: torch.Tensor, group) -> torch.Tensor:
    return x if group_size(group) == 1 else _ScatterToTP.apply(x, group, 0)


def gather_from_sequence_parallel_region(x: torch.Tensor, group, tensor_parallel_output_grad: bool = True
                                         ) -> torch.Tensor:
    """All-gather along dim 0. Backward: reduce-scatter when the consumer is tensor-parallel (each rank's gradient
    is a partial sum, e.g. the input of a ColumnParallelLinear), else split (the gradient is already complete)."""
    return x if group_size(group) == 1 else _GatherFromSP.apply(x, group, tensor_parallel_output_grad)


def reduce_scatter_to_sequence_parallel_region(x: torch.Tensor, group) -> torch.Tensor:
    return x if group_size(group) == 1 else _ReduceScatterToSP.apply(x, group)
