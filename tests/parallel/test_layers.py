"""Tensor-parallel layers equal their dense torch counterparts, forward and backward (gloo, 2 ranks, float64)."""

import pytest
import torch
import torch.nn.functional as F

from megatron_tf.parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    allreduce_sequence_parallel_grads,
    copy_full_,
    merge_shards,
    shard_tensor,
)
from tests.dist_utils import init_gloo, run_distributed

S, B, H, OUT, V = 4, 3, 8, 12, 10  # sequence, batch, in features, out features, vocabulary (padded)


def _dense_and_grads(fn, x, w, gy):
    x = x.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    y = fn(x, w)
    y.backward(gy)
    return y.detach(), x.grad, w.grad


def _run_layer(layer, x_local, gy_local):
    x = x_local.clone().requires_grad_(True)
    y = layer(x)
    y.backward(gy_local)
    return y.detach(), x.grad, layer.weight.grad


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _worker(rank, world, port):
    init_gloo(rank, world, port)
    import torch.distributed as dist

    g = dist.new_group([0, 1])
    torch.manual_seed(0)
    x = torch.randn(S, B, H, dtype=torch.float64)
    w = torch.randn(OUT, H, dtype=torch.float64)
    w_row = torch.randn(OUT, H, dtype=torch.float64)
    gy = torch.randn(S, B, OUT, dtype=torch.float64)
    ids = torch.randint(0, V, (S, B))
    emb = torch.randn(V, H, dtype=torch.float64)
    gy_emb = torch.randn(S, B, H, dtype=torch.float64)
    r, seq = rank, slice(rank * S // 2, (rank + 1) * S // 2)
    y_ref, gx_ref, gw_ref = _dense_and_grads(F.linear, x, w, gy)

    for chunks in (None, (4, 8)):  # plain split, and two blocks split separately (like [Q; K; V] or [gate; up])
        cols = shard_tensor(torch.arange(OUT), 0, chunks or (), 2, r)  # which output features this rank holds
        for gather_output in ((False, True) if chunks is None else (False,)):
            layer = ColumnParallelLinear(H, OUT, g, gather_output=gather_output, output_chunks=chunks,
                                         dtype=torch.float64)
            copy_full_(layer.weight, w, g)
            gy_local = gy if gather_output else gy[..., cols]
            y, gx, gw = _run_layer(layer, x, gy_local)
            _close(y, y_ref if gather_output else y_ref[..., cols])
            _close(gx, gx_ref)
            _close(gw, gw_ref[cols])
        # sequence parallel: input is this rank's sequence chunk, the gradient of the input too
        layer = ColumnParallelLinear(H, OUT, g, sequence_parallel=True, output_chunks=chunks, dtype=torch.float64)
        copy_full_(layer.weight, w, g)
        y, gx, gw = _run_layer(layer, x[seq], gy[..., cols])
        _close(y, y_ref[..., cols])
        _close(gx, gx_ref[seq])
        _close(gw, gw_ref[cols])

    # RowParallelLinear OUT -> H: weight [H, OUT] split along its input dim
    w_row = w_row.t().contiguous()
    xin = torch.randn(S, B, OUT, dtype=torch.float64)
    gy_row = gy[..., :H].contiguous()
    y_ref, gx_ref, gw_ref = _dense_and_grads(F.linear, xin, w_row, gy_row)
    half = slice(r * OUT // 2, (r + 1) * OUT // 2)
    for input_is_parallel in (True, False):
        layer = RowParallelLinear(OUT, H, g, input_is_parallel=input_is_parallel, dtype=torch.float64)
        copy_full_(layer.weight, w_row, g)
        y, gx, gw = _run_layer(layer, xin[..., half] if input_is_parallel else xin, gy_row)
        _close(y, y_ref)
        _close(gx, gx_ref[..., half] if input_is_parallel else gx_ref)
        _close(gw, gw_ref[:, half])
    # sequence parallel: the output is this rank's sequence chunk (reduce-scatter); each rank passes the upstream
    # gradient of its chunk, which together make up gy_row
    layer = RowParallelLinear(OUT, H, g, sequence_parallel=True, dtype=torch.float64)
    copy_full_(layer.weight, w_row, g)
    y, gx, gw = _run_layer(layer, xin[..., half], gy_row[seq])
    _close(y, y_ref[seq])
    _close(gx, gx_ref[..., half])
    _close(gw, gw_ref[:, half])
    with pytest.raises(ValueError, match="interleave"):
        ColumnParallelLinear(H, OUT, g, gather_output=True, output_chunks=(4, 8))

    emb_ref, _, gemb_ref = _dense_and_grads(lambda i, e: F.embedding(ids, e), ids.double(), emb, gy_emb)
    rows = slice(r * V // 2, (r + 1) * V // 2)
    for sp in (False, True):
        layer = VocabParallelEmbedding(V, H, g, sequence_parallel=sp, dtype=torch.float64)
        copy_full_(layer.weight, emb, g)
        out = layer(ids)
        _close(out, emb_ref[seq] if sp else emb_ref)
        out.backward(gy_emb[seq] if sp else gy_emb)
        _close(layer.weight.grad, gemb_ref[rows])

    # replicated parameters under sequence parallelism: the gradient is summed over the TP group
    norm_w = torch.nn.Parameter(torch.ones(3))
    norm_w.sequence_parallel = True
    norm_w.grad = torch.full((3,), float(r + 1))
    module = torch.nn.Module()
    module.w = norm_w
    allreduce_sequence_parallel_grads(module, g)
    assert torch.equal(norm_w.grad, torch.full((3,), 3.0))


def test_layers_match_dense_two_ranks():
    run_distributed(_worker, 2)


def test_shard_merge_round_trip():
    full = torch.arange(24.0).view(12, 2)
    for chunks in ((), (12,), (4, 8), (4, 4, 4)):
        shards = [shard_tensor(full, 0, chunks, 2, r) for r in range(2)]
        assert torch.equal(merge_shards(shards, 0, chunks), full)
    # two blocks: rank 0 holds the first half of each block
    assert shard_tensor(torch.arange(12), 0, (4, 8), 2, 0).tolist() == [0, 1, 4, 5, 6, 7]
    assert shard_tensor(torch.arange(12), 0, (4, 8), 2, 1).tolist() == [2, 3, 8, 9, 10, 11]
    assert torch.equal(merge_shards([full[:, :1], full[:, 1:]], 1, ()), full)
    with pytest.raises(ValueError, match="not divisible by the tensor-parallel size 2"):
        shard_tensor(full, 0, (3, 9), 2, 0)


def test_single_rank_layers_are_dense():
    torch.manual_seed(0)
    x = torch.randn(5, 8)
    col, row = ColumnParallelLinear(8, 6), RowParallelLinear(6, 8)
    for layer in (col, row):
        torch.nn.init.normal_(layer.weight)
    torch.testing.assert_close(row(col(x)), x @ col.weight.t() @ row.weight.t())
    with pytest.raises(NotImplementedError, match="biases"):
        ColumnParallelLinear(8, 6, bias=True)
