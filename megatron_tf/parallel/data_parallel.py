"""Data-parallel gradient averaging in flat buckets, device-agnostic (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def allreduce_mean_grads(params, dp_group, dp_size: int, bucket_elems: int = 1 << 26) -> None:
    """Average gradients over the data-parallel group in flat buckets (the trainer uses it with PP > 1,
    where DDP's reducer would fire on the wrong microbatch; training/loop.py)."""
    grads = [p.grad for p in params if p.grad is not None]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for gr in grads:
        by_dtype.setdefault(gr.dtype, []).append(gr)
    for group in by_dtype.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for gr in [*group, None]:
            if gr is not None:
                bucket.append(gr)
                size += gr.numel()
            if bucket and (gr is None or size >= bucket_elems):
                flat = torch.cat([x.reshape(-1) for x in bucket])
                dist.all_reduce(flat, group=dp_group)
                flat.div_(dp_size)
                off = 0
                for x in bucket:
                    x.copy_(flat[off:off + x.numel()].view_as(x))
                    off += x.numel()
                bucket, size = [], 0
