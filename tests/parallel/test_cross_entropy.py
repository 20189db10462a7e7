"""The PyTorch reference of the masked vocab-parallel cross-entropy: parity with F.cross_entropy in float64, masking,
weights, label smoothing, TP=2 over gloo against the unsharded reference, no host synchronisation."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_tf.ops import row_stats
from megatron_tf.parallel import cross_entropy as ce
from megatron_tf.parallel.cross_entropy import cross_entropy_loss_and_grad, vocab_parallel_cross_entropy
from tests.dist_utils import init_gloo, run_distributed


def _ref(logits, target, weights, eps=0.0):
    """float64 per-token weight * CE (0 where weight == 0) via F.cross_entropy, and d sum(loss * g) / d logits."""
    x = logits.to(torch.float64)
    v = x.shape[-1]
    ce64 = F.cross_entropy(x.reshape(-1, v), target.reshape(-1), reduction="none", label_smoothing=eps)
    w = weights.reshape(-1).to(torch.float64)
    loss = torch.where(w != 0, ce64 * w, 0.0).view(target.shape)
    return loss


def _inputs(shape, v, seed, masked_frac=0.3, dtype=torch.float64, float_weights=False):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, v, generator=g, dtype=torch.float64) * 3).to(dtype)
    target = torch.randint(0, v, shape, generator=g)
    if float_weights:
        mask = torch.rand(shape, generator=g, dtype=torch.float64) * 2
        mask[torch.rand(shape, generator=g) < masked_frac] = 0
    else:
        mask = torch.rand(shape, generator=g) >= masked_frac
    return logits, target, mask


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("float_weights", [False, True])
def test_matches_f_cross_entropy_float64(eps, float_weights):
    logits, target, mask = _inputs((3, 5), 37, seed=1, float_weights=float_weights)
    target[0, :2] = torch.tensor([0, 36])  # first and last vocabulary ids
    x = logits.clone().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(x, target, mask, label_smoothing=eps)
    assert loss.dtype == torch.float64 and loss.shape == target.shape
    x_ref = logits.clone().requires_grad_(True)
    ref = _ref(x_ref, target, mask, eps)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn(target.shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad(loss, x, g)
    (grad_ref,) = torch.autograd.grad(_ref(x_ref, target, mask, eps), x_ref, g)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 4e-3)])
def test_low_precision_against_float64(dtype, tol):
    logits, target, mask = _inputs((64,), 301, seed=2, dtype=dtype)
    x = logits.clone().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(x, target, mask)
    assert loss.dtype == torch.float32
    x64 = logits.to(torch.float64).requires_grad_(True)
    ref = _ref(x64, target, mask)
    # the loss is computed in fp32 from the exact input values: fp32 accuracy for both input dtypes
    assert ((loss.double() - ref).norm() / ref.norm()).item() < 2e-6
    (grad,) = torch.autograd.grad(loss.sum(), x)
    (grad_ref,) = torch.autograd.grad(ref.sum(), x64)
    assert grad.dtype == dtype
    rel = ((grad.double() - grad_ref).norm() / grad_ref.norm()).item()
    assert rel < tol  # fp32 math, one rounding to the logits dtype


def test_masked_rows_zero_loss_and_exact_zero_grad_even_with_nonfinite_logits():
    logits, target, mask = _inputs((40,), 50, seed=3)
    logits[~mask] = float("nan")
    logits[~mask, 0] = float("inf")
    target[~mask] = -100  # ignored ids on masked rows are fine
    x = logits.clone().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(x, target, mask)
    assert (loss[~mask] == 0).all() and torch.isfinite(loss[mask]).all()
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert (grad[~mask] == 0).all() and torch.isfinite(grad).all()


def test_fully_masked_batch_gives_zero_not_nan():
    logits, target, _ = _inputs((2, 6), 11, seed=4)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    x = logits.clone().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(x, target, mask)
    total = loss.sum() / mask.sum().clamp(min=1)
    assert total.item() == 0.0
    total.backward()
    assert (x.grad == 0).all()


def test_float_weights_scale_loss_and_grad():
    logits, target, _ = _inputs((30,), 23, seed=5)
    ones = torch.ones(30, dtype=torch.float64)
    w = torch.linspace(0, 2, 30, dtype=torch.float64)
    x1 = logits.clone().requires_grad_(True)
    x2 = logits.clone().requires_grad_(True)
    l1 = vocab_parallel_cross_entropy(x1, target, ones)
    l2 = vocab_parallel_cross_entropy(x2, target, w)
    torch.testing.assert_close(l2, l1 * w, rtol=1e-13, atol=0)
    l1.sum().backward()
    l2.sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad * w[:, None], rtol=1e-13, atol=0)


def test_row_chunking_gives_identical_results(monkeypatch):
    logits, target, mask = _inputs((50,), 40, seed=6, dtype=torch.float32)
    x1 = logits.clone().requires_grad_(True)
    l1 = vocab_parallel_cross_entropy(x1, target, mask, label_smoothing=0.05)
    l1.sum().backward()
    monkeypatch.setattr(ce, "_CHUNK_ELEMS", 7 * 40)  # 7 rows per chunk: 8 chunks, the last partial
    x2 = logits.clone().requires_grad_(True)
    l2 = vocab_parallel_cross_entropy(x2, target, mask, label_smoothing=0.05)
    l2.sum().backward()
    assert torch.equal(l1, l2) and torch.equal(x1.grad, x2.grad)


def test_inplace_backward_writes_the_gradient_into_the_logits_buffer():
    logits, target, mask = _inputs((20,), 17, seed=7, dtype=torch.float32)
    x = logits.clone().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(x, target, mask)
    (expected,) = torch.autograd.grad(loss.sum(), x)
    buf = logits.clone()
    leaf = buf.requires_grad_(True)
    (grad,) = torch.autograd.grad(vocab_parallel_cross_entropy(leaf, target, mask, inplace_backward=True).sum(), leaf)
    assert torch.equal(grad, expected)
    assert grad.data_ptr() == buf.data_ptr()  # no new logits-sized buffer


def test_loss_and_grad_api_equals_autograd_with_mean_scale():
    logits, target, mask = _inputs((4, 9), 29, seed=8, dtype=torch.float32)
    scale = 1.0 / mask.sum().clamp(min=1).to(torch.float32)  # a tensor: no host sync needed
    x = logits.clone().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(x, target, mask, label_smoothing=0.1)
    (expected,) = torch.autograd.grad(loss.sum() * scale, x)
    loss2, grad = cross_entropy_loss_and_grad(logits, target, mask, scale, label_smoothing=0.1)
    torch.testing.assert_close(loss2, loss.detach(), rtol=0, atol=0)
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-9)
    assert grad.shape == logits.shape


def test_combine_worked_example_from_docstring():
    # shard 0 holds logits [1, 2], shard 1 holds [3, 0]; target id 2 (on shard 1)
    lse0 = torch.logsumexp(torch.tensor([1.0, 2.0], dtype=torch.float64), 0)
    lse1 = torch.logsumexp(torch.tensor([3.0, 0.0], dtype=torch.float64), 0)
    g = torch.stack([torch.stack([lse0, torch.tensor(0.0, dtype=torch.float64)]),
                     torch.stack([lse1, torch.tensor(3.0, dtype=torch.float64)])]).view(2, 1, 2)
    loss, lse = row_stats.combine_row_stats(g, torch.ones(1, dtype=torch.float64), 0.0, 4)
    assert round(lse0.item(), 4) == 2.3133 and round(lse1.item(), 4) == 3.0486
    assert round(lse.item(), 4) == 3.4402 and round(loss.item(), 4) == 0.4402
    full = F.cross_entropy(torch.tensor([[1.0, 2.0, 3.0, 0.0]], dtype=torch.float64), torch.tensor([2]))
    torch.testing.assert_close(loss, full.view(1), rtol=1e-14, atol=0)


def test_bad_inputs_raise_clear_errors():
    logits, target, mask = _inputs((3, 4), 10, seed=9)
    with pytest.raises(ValueError, match=r"target shape \(3, 5\) must equal logits.shape\[:-1\] = \(3, 4\)"):
        vocab_parallel_cross_entropy(logits, torch.zeros(3, 5, dtype=torch.long), mask)
    with pytest.raises(ValueError, match="loss_mask shape"):
        vocab_parallel_cross_entropy(logits, target, mask[:, :2])
    with pytest.raises(ValueError, match="target must be int64"):
        vocab_parallel_cross_entropy(logits, target.float(), mask)
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        vocab_parallel_cross_entropy(logits, target, mask, label_smoothing=1.0)
    with pytest.raises(ValueError, match="impl must be one of"):
        vocab_parallel_cross_entropy(logits, target, mask, impl="cuda")


def _host_sync_free(fn) -> None:
    """Run fn under FakeTensorMode: an .item(), nonzero() or other data-dependent op raises there."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=False):
        fn()


def test_no_host_sync_forward_and_backward():
    def run():
        x = torch.randn(6, 33, dtype=torch.float32, requires_grad=True)
        target = torch.randint(0, 33, (6,))
        mask = torch.rand(6) > 0.3
        loss = vocab_parallel_cross_entropy(x, target, mask, impl="torch", label_smoothing=0.1)
        total = loss.sum() / mask.sum().clamp(min=1)
        total.backward()
        assert x.grad.shape == (6, 33)
        scale = 1.0 / mask.sum().clamp(min=1).float()
        cross_entropy_loss_and_grad(x.detach(), target, mask, scale, impl="torch")

    _host_sync_free(run)

    # the harness does catch a host sync (so the check above can fail)
    def syncs():
        x = torch.randn(6, 33)
        float(x.sum().item())

    with pytest.raises(Exception, match="(?i)data.dependent|item|scalar"):
        _host_sync_free(syncs)


# ---------------------------------------------------------------------------------------------------------------
# TP = 2 over gloo
# ---------------------------------------------------------------------------------------------------------------
def _tp2_worker(rank, world, port):
    init_gloo(rank, world, port)
    group = dist.new_group([0, 1])
    v, vl = 24, 12
    g = torch.Generator().manual_seed(11)  # same inputs on both ranks
    full = torch.randn(5, 7, v, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, v, (5, 7), generator=g)
    target[0, :6] = torch.tensor([0, vl - 1, vl, v - 1, vl - 1, vl])  # shard edges
    mask = torch.rand(5, 7, generator=g) * 2
    mask[torch.rand(5, 7, generator=g) < 0.3] = 0
    mask[0, :6] = 1.0
    upstream = torch.randn(5, 7, generator=g, dtype=torch.float64)
    for eps in (0.0, 0.1):
        shard = full[..., rank * vl:(rank + 1) * vl].clone().requires_grad_(True)
        loss = vocab_parallel_cross_entropy(shard, target, mask, tp_group=group, label_smoothing=eps)
        xr = full.clone().requires_grad_(True)
        ref = _ref(xr, target, mask, eps)
        torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
        (grad,) = torch.autograd.grad(loss, shard, upstream)
        (grad_ref,) = torch.autograd.grad(ref, xr, upstream, retain_graph=True)
        torch.testing.assert_close(grad, grad_ref[..., rank * vl:(rank + 1) * vl], rtol=1e-12, atol=1e-12)
        # TP = 2 equals TP = 1 (float32 too)
        l1 = vocab_parallel_cross_entropy(full.float(), target, mask.float(), label_smoothing=eps)
        l2 = vocab_parallel_cross_entropy(shard.detach().float(), target, mask.float(), tp_group=group,
                                          label_smoothing=eps)
        torch.testing.assert_close(l2, l1, rtol=2e-6, atol=2e-6)
        # the one-pass API under TP
        scale = torch.tensor(0.25, dtype=torch.float64)
        l3, g3 = cross_entropy_loss_and_grad(shard.detach(), target, mask, scale, tp_group=group, label_smoothing=eps)
        torch.testing.assert_close(l3, ref.detach(), rtol=1e-12, atol=1e-12)
        (gref,) = torch.autograd.grad(ref.sum() * 0.25, xr)
        torch.testing.assert_close(g3, gref[..., rank * vl:(rank + 1) * vl], rtol=1e-12, atol=1e-12)
    # the list all_gather fallback (for backends that reject the single-tensor form) gives the same result
    base = torch.arange(12, dtype=torch.float64).view(4, 3)
    stats = base + 100 * rank
    direct = row_stats.gather_row_stats(stats, group)
    real = getattr(dist, "all_gather_single", None)

    def reject(*a, **k):
        raise RuntimeError("not supported")

    if real is not None:
        dist.all_gather_single = reject
    orig_into = dist.all_gather_into_tensor
    dist.all_gather_into_tensor = reject
    try:
        fallback = row_stats.gather_row_stats(stats, group)
    finally:
        dist.all_gather_into_tensor = orig_into
        if real is not None:
            dist.all_gather_single = real
    assert torch.equal(direct, fallback)
    assert torch.equal(direct, torch.stack([base, base + 100]))


@pytest.mark.slow
def test_tp2_gloo_matches_unsharded_float64():
    run_distributed(_tp2_worker, 2)
