"""Autograd collectives: forward and backward of every mapping against the full-tensor arithmetic (gloo, 2 ranks)."""

import torch

from megatron_tf.parallel import mappings as M
from tests.dist_utils import init_gloo, run_distributed


def _check(fn, x_local, expected_out, grad_out, expected_grad):
    x = x_local.clone().requires_grad_(True)
    y = fn(x)
    torch.testing.assert_close(y, expected_out, rtol=0, atol=1e-12)
    y.backward(grad_out)
    torch.testing.assert_close(x.grad, expected_grad, rtol=0, atol=1e-12)


def _worker(rank, world, port):
    init_gloo(rank, world, port)
    import torch.distributed as dist

    g = dist.new_group([0, 1])
    torch.manual_seed(0)  # the same "full" tensors on both ranks
    xs = [torch.randn(4, 3, 6, dtype=torch.float64) for _ in range(2)]  # rank r's local input
    gs = [torch.randn(4, 3, 6, dtype=torch.float64) for _ in range(2)]  # rank r's upstream gradient
    full_last = torch.randn(4, 3, 6, dtype=torch.float64)
    g_half_last = [torch.randn(4, 3, 3, dtype=torch.float64) for _ in range(2)]
    g_half_first = [torch.randn(2, 3, 6, dtype=torch.float64) for _ in range(2)]
    g_double_first = [torch.randn(8, 3, 6, dtype=torch.float64) for _ in range(2)]
    r = rank

    # copy: identity forward, all-reduce backward
    _check(lambda t: M.copy_to_tp_region(t, g), xs[r], xs[r], gs[r], gs[0] + gs[1])
    # reduce: all-reduce forward, identity backward
    _check(lambda t: M.reduce_from_tp_region(t, g), xs[r], xs[0] + xs[1], gs[r], gs[r])
    # scatter along the last dim: keep this rank's half; backward gathers the halves
    _check(lambda t: M.scatter_to_tp_region(t, g, -1), full_last, full_last[..., 3 * r:3 * r + 3], g_half_last[r],
           torch.cat(g_half_last, -1))
    # gather along the last dim (and along a middle dim)
    _check(lambda t: M.gather_from_tp_region(t, g, -1), xs[r], torch.cat(xs, -1), torch.cat(g_half_last * 2, -1),
           torch.cat(g_half_last * 2, -1)[..., 6 * r:6 * r + 6])
    _check(lambda t: M.gather_from_tp_region(t, g, 1), xs[r], torch.cat(xs, 1),
           torch.cat(gs, 1), torch.cat(gs, 1)[:, 3 * r:3 * r + 3])
    # sequence parallel: scatter dim 0
    _check(lambda t: M.scatter_to_sequence_parallel_region(t, g), full_last, full_last[2 * r:2 * r + 2],
           g_half_first[r], torch.cat(g_half_first, 0))
    # gather dim 0; backward reduce-scatter (TP-partial gradient) or split
    _check(lambda t: M.gather_from_sequence_parallel_region(t, g, True), xs[r], torch.cat(xs, 0), g_double_first[r],
           (g_double_first[0] + g_double_first[1])[4 * r:4 * r + 4])
    _check(lambda t: M.gather_from_sequence_parallel_region(t, g, False), xs[r], torch.cat(xs, 0),
           g_double_first[r], g_double_first[r][4 * r:4 * r + 4])
    # reduce-scatter dim 0; backward all-gather
    _check(lambda t: M.reduce_scatter_to_sequence_parallel_region(t, g), xs[r], (xs[0] + xs[1])[2 * r:2 * r + 2],
           g_half_first[r], torch.cat(g_half_first, 0))
    # the autograd input is never modified in place
    x = xs[r].clone()
    M.reduce_from_tp_region(x, g)
    assert torch.equal(x, xs[r])


def test_mappings_two_ranks():
    run_distributed(_worker, 2)


def test_size_one_group_is_identity():
    x = torch.randn(4, 6, requires_grad=True)
    for fn in (M.copy_to_tp_region, M.reduce_from_tp_region, M.scatter_to_tp_region, M.gather_from_tp_region,
               M.scatter_to_sequence_parallel_region, M.gather_from_sequence_parallel_region,
               M.reduce_scatter_to_sequence_parallel_region):
        assert fn(x, None) is x
