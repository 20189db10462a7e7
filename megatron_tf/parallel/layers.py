"""Megatron-style tensor-parallel layers: ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding.

Y = X A with A split by columns (ColumnParallelLinear: rank r holds output features of its shard) or by rows
(RowParallelLinear: rank r holds input features of its shard and the partial products are summed), as in
Shoeybi et al. 2019 (Megatron-LM) section 3; sequence parallelism (Korthikanti et al. 2022) replaces the all-reduce
of a RowParallelLinear by a reduce-scatter along the sequence (dim 0) and the identity/all-reduce pair in front of a
ColumnParallelLinear by an all-gather/reduce-scatter pair.

Partitioning metadata lives on every parameter (Megatron's attribute names where Megatron has them):
- `tensor_model_parallel` (bool); for True: `partition_dim` and `partition_chunks`, the lengths of the logical
  blocks of the FULL tensor along that dim. Each block is split evenly over the TP ranks and rank r holds the
  concatenation of the r-th piece of every block. One block is the plain contiguous split; a fused [gate; up] MLP
  weight has two blocks (ffn, ffn), so rank r holds [gate_r; up_r] and the full (TP=1) tensor stays [gate; up].
- `sequence_parallel` (bool): a replicated parameter that only sees this rank's sequence shard (norm weights under
  sequence parallelism); its gradient must be summed over the TP group: `allreduce_sequence_parallel_grads`.

`shard_tensor` / `merge_shards` convert between full tensors and shards with this metadata; they are how weights
are initialised independently of the TP size and how TP checkpoints are merged.
No biases (the GPT here has none); the layers accept `bias=False` only, to keep that explicit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from megatron_tf.parallel.groups import group_rank, group_size
from megatron_tf.parallel.mappings import (
    copy_to_tp_region,
    gather_from_sequence_parallel_region,
    gather_from_tp_region,
    reduce_from_tp_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_tp_region,
)


def set_tp_attributes(param: nn.Parameter, partition_dim: int | None, chunks: Sequence[int] = ()) -> None:
    param.tensor_model_parallel = partition_dim is not None
    if partition_dim is not None:
        param.partition_dim = partition_dim
        param.partition_chunks = tuple(int(c) for c in chunks)


def _check_chunks(dim_len: int, chunks: Sequence[int], tp: int, what: str) -> None:
    if sum(chunks) != dim_len:
        raise ValueError(f"{what}: blocks {tuple(chunks)} do not add up to the dimension length {dim_len}")
    for c in chunks:
        if c % tp:
            raise ValueError(f"{what}: block of length {c} is not divisible by the tensor-parallel size {tp}")


def shard_tensor(full: torch.Tensor, dim: int, chunks: Sequence[int], tp_size: int, tp_rank: int) -> torch.Tensor:
    """This rank's shard of a full tensor (see the module docstring for the block layout)."""
    chunks = tuple(chunks) or (full.shape[dim],)
    _check_chunks(full.shape[dim], chunks, tp_size, "shard_tensor")
    pieces, start = [], 0
    for c in chunks:
        step = c // tp_size
        pieces.append(full.narrow(dim, start + tp_rank * step, step))
        start += c
    return torch.cat(pieces, dim=dim) if len(pieces) > 1 else pieces[0].clone()


def merge_shards(shards: Sequence[torch.Tensor], dim: int, chunks: Sequence[int]) -> torch.Tensor:
    """Inverse of shard_tensor: the full tensor from the shards of ranks 0..tp-1."""
    tp = len(shards)
    full_len = shards[0].shape[dim] * tp
    chunks = tuple(chunks) or (full_len,)
    _check_chunks(full_len, chunks, tp, "merge_shards")
    for i, s in enumerate(shards):
        if s.shape != shards[0].shape:
            raise ValueError(f"merge_shards: shard {i} has shape {tuple(s.shape)}, shard 0 {tuple(shards[0].shape)}")
    blocks, start = [], 0
    for c in chunks:
        step = c // tp
        blocks.extend(s.narrow(dim, start, step) for s in shards)
        start += step
    return torch.cat(blocks, dim=dim)


@torch.no_grad()
def copy_full_(param: torch.Tensor, full: torch.Tensor, tp_group) -> None:
    """Fill `param` (a shard or a replicated tensor) from the full tensor, using the parameter's metadata."""
    if getattr(param, "tensor_model_parallel", False):
        full = shard_tensor(full, param.partition_dim, param.partition_chunks, group_size(tp_group),
                            group_rank(tp_group))
    if full.shape != param.shape:
        raise ValueError(f"copy_full_: shard shape {tuple(full.shape)} != parameter shape {tuple(param.shape)}")
    param.copy_(full)


def _divide(n: int, tp: int, what: str) -> int:
    if n % tp:
        raise ValueError(f"{what} ({n}) is not divisible by the tensor-parallel size {tp}")
    return n // tp


def _no_bias(bias: bool, name: str) -> None:
    if bias:
        raise NotImplementedError(f"{name}: biases are not implemented (the GPT here has none)")


class ColumnParallelLinear(nn.Module):
    """Y = X A^T with A [out, in] split along `out` (dim 0) over the TP group.

    Input: [..., in] replicated over the TP group, or with sequence_parallel [s/tp, ..., in] (this rank's sequence
    chunk along dim 0). Output: [..., out/tp] (this rank's columns), or [..., out] with gather_output.
    `output_chunks`: block lengths of the output dim (e.g. (q, k, v) or (gate, up)); each block is split separately.
    """

    def __init__(self, input_size: int, output_size: int, tp_group=None, *, bias: bool = False,
                 gather_output: bool = False, sequence_parallel: bool = False,
                 output_chunks: Sequence[int] | None = None, device=None, dtype=None):
        super().__init__()
        _no_bias(bias, "ColumnParallelLinear")
        self.tp_group = tp_group
        tp = group_size(tp_group)
        chunks = tuple(output_chunks) if output_chunks else (output_size,)
        _check_chunks(output_size, chunks, tp, "ColumnParallelLinear output blocks")
        self.input_size, self.output_size = input_size, output_size
        self.output_size_per_partition = _divide(output_size, tp, "ColumnParallelLinear output size")
        self.gather_output, self.sequence_parallel = gather_output, sequence_parallel
        if gather_output and sequence_parallel:
            raise ValueError("ColumnParallelLinear: gather_output with sequence_parallel is not supported")
        if gather_output and len(chunks) > 1 and tp > 1:
            raise ValueError("ColumnParallelLinear: gather_output with several output blocks would interleave the "
                             "blocks' shards; gather and reorder with merge_shards instead")
        self.weight = nn.Parameter(torch.empty(self.output_size_per_partition, input_size, device=device,
                                               dtype=dtype))
        set_tp_attributes(self.weight, 0, chunks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sequence_parallel:
            x = gather_from_sequence_parallel_region(x, self.tp_group, tensor_parallel_output_grad=True)
        else:
            x = copy_to_tp_region(x, self.tp_group)
        y = F.linear(x, self.weight)
        return gather_from_tp_region(y, self.tp_group, -1) if self.gather_output else y

    def extra_repr(self) -> str:
        return (f"in={self.input_size}, out={self.output_size} (local {self.output_size_per_partition}), "
                f"sequence_parallel={self.sequence_parallel}")


class RowParallelLinear(nn.Module):
    """Y = X A^T with A [out, in] split along `in` (dim 1) over the TP group; partial products are summed.

    Input: [..., in/tp] (input_is_parallel, the output of a ColumnParallelLinear) or [..., in] replicated (it is
    scattered here). Output: [..., out] replicated, or with sequence_parallel this rank's sequence chunk
    [s/tp, ..., out] (reduce-scatter along dim 0).
    """

    def __init__(self, input_size: int, output_size: int, tp_group=None, *, bias: bool = False,
                 input_is_parallel: bool = True, sequence_parallel: bool = False, device=None, dtype=None):
        super().__init__()
        _no_bias(bias, "RowParallelLinear")
        self.tp_group = tp_group
        tp = group_size(tp_group)
        self.input_size, self.output_size = input_size, output_size
        self.input_size_per_partition = _divide(input_size, tp, "RowParallelLinear input size")
        self.input_is_parallel, self.sequence_parallel = input_is_parallel, sequence_parallel
        if sequence_parallel and not input_is_parallel:
            raise ValueError("RowParallelLinear: sequence_parallel requires input_is_parallel")
        self.weight = nn.Parameter(torch.empty(output_size, self.input_size_per_partition, device=device,
                                               dtype=dtype))
        set_tp_attributes(self.weight, 1, (input_size,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = scatter_to_tp_region(x, self.tp_group, -1)
        y = F.linear(x, self.weight)
        if self.sequence_parallel:
            return reduce_scatter_to_sequence_parallel_region(y, self.tp_group)
        return reduce_from_tp_region(y, self.tp_group)

    def extra_repr(self) -> str:
        return (f"in={self.input_size} (local {self.input_size_per_partition}), out={self.output_size}, "
                f"sequence_parallel={self.sequence_parallel}")


class VocabParallelEmbedding(nn.Module):
    """Embedding table [V, h] split along the vocabulary: rank r holds rows [r*V/tp, (r+1)*V/tp).

    Each rank looks up the ids in its range (others give zero rows) and the results are summed over the TP group
    (all-reduce; with sequence_parallel a reduce-scatter along dim 0, so pass ids as [s, b] to get [s/tp, b, h]).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, tp_group=None, *, sequence_parallel: bool = False,
                 device=None, dtype=None):
        super().__init__()
        self.tp_group = tp_group
        tp, rank = group_size(tp_group), group_rank(tp_group)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.num_embeddings_per_partition = _divide(num_embeddings, tp, "VocabParallelEmbedding vocabulary size")
        self.vocab_start_index = rank * self.num_embeddings_per_partition
        self.vocab_end_index = self.vocab_start_index + self.num_embeddings_per_partition
        self.sequence_parallel = sequence_parallel
        self.weight = nn.Parameter(torch.empty(self.num_embeddings_per_partition, embedding_dim, device=device,
                                               dtype=dtype))
        set_tp_attributes(self.weight, 0, (num_embeddings,))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if group_size(self.tp_group) == 1:
            out = F.embedding(ids, self.weight)
            return out
        outside = (ids < self.vocab_start_index) | (ids >= self.vocab_end_index)
        local = (ids - self.vocab_start_index).masked_fill(outside, 0)
        out = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        if self.sequence_parallel:
            return reduce_scatter_to_sequence_parallel_region(out, self.tp_group)
        return reduce_from_tp_region(out, self.tp_group)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings} (local {self.num_embeddings_per_partition}), {self.embedding_dim}, "
                f"sequence_parallel={self.sequence_parallel}")


def sequence_parallel_params(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if getattr(p, "sequence_parallel", False)]


def allreduce_sequence_parallel_grads(module: nn.Module, tp_group) -> None:
    """Sum the gradients of replicated parameters that only saw this rank's sequence chunk (norm weights) over
    the TP group. Call after backward and before the data-parallel reduction / optimizer step (Megatron:
    `_allreduce_layernorm_grads`). Reads `.grad` (and `.main_grad` when a trainer keeps one instead)."""
    if group_size(tp_group) == 1:
        return
    grads = []
    for p in sequence_parallel_params(module):
        g = getattr(p, "main_grad", None)
        g = p.grad if g is None else g
        if g is not None:
            grads.append(g)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=tp_group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
