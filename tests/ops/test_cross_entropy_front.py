"""The Python front of the fused cross-entropy (megatron_tf/ops/cross_entropy.py) on CPU: implementation choice and its
log, clear errors, and the autograd/TP plumbing around the kernels, driven here by a stand-in extension that follows the
binding's contract (csrc/binding.cpp) with the PyTorch reference math. The kernels themselves are checked on a GPU by
tests/ops/test_cross_entropy_cuda.py."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from megatron_tf.ops import cross_entropy as fused_ce
from megatron_tf.parallel import cross_entropy as ce
from tests.log_utils import captured_log


@pytest.fixture
def log_capture(monkeypatch):
    monkeypatch.setattr(fused_ce, "_logged", set())
    with captured_log("megatron_tf.ops.cross_entropy") as messages:
        yield messages


def test_auto_on_cpu_uses_torch_and_logs_once(log_capture):
    x = torch.randn(4, 10, requires_grad=True)
    t = torch.randint(0, 10, (4,))
    m = torch.ones(4, dtype=torch.bool)
    for _ in range(3):
        ce.vocab_parallel_cross_entropy(x, t, m).sum().backward()
    assert len(log_capture) == 1
    assert "impl=auto -> PyTorch reference (logits on cpu)" in log_capture[0]


def test_fused_on_cpu_is_a_clear_error():
    x = torch.randn(4, 10)
    with pytest.raises(RuntimeError, match="'fused' needs logits on a CUDA device, got device cpu"):
        ce.vocab_parallel_cross_entropy(x, torch.zeros(4, dtype=torch.long), None, impl="fused")


def test_extension_built_before_the_rename_is_unavailable_not_a_crash(monkeypatch):
    """A megatron_tf._C built from older sources exports xent_forward, not cross_entropy_forward: it counts as not
    importable (auto falls back to the reference) and the error says to rebuild."""
    stale = types.SimpleNamespace(__file__="/x/megatron_tf/_C.so", xent_forward=None, xent_backward=None)
    monkeypatch.setitem(sys.modules, "megatron_tf._C", stale)
    monkeypatch.delenv("MEGATRON_TF_JIT_EXT", raising=False)
    for name, value in (("_ext", None), ("_ext_error", None), ("_ext_tried", False)):
        monkeypatch.setattr(fused_ce, name, value)
    assert fused_ce.load_extension() is None
    err = fused_ce.extension_error()
    assert "/x/megatron_tf/_C.so was built from older sources (no cross_entropy_forward)" in err
    assert "pip install --no-build-isolation -e ." in err


@pytest.mark.skipif(fused_ce.fused_available(), reason="the extension is built here")
def test_fused_without_extension_is_a_clear_error_and_auto_falls_back(log_capture):
    with pytest.raises(RuntimeError, match=r"megatron_tf\._C is not importable.*pip install --no-build-isolation"):
        fused_ce.select_impl("fused", torch.device("cuda"), torch.bfloat16)
    assert fused_ce.select_impl("auto", torch.device("cuda"), torch.bfloat16) == "torch"
    assert "PyTorch reference (megatron_tf._C is not importable" in log_capture[-1]


def test_auto_picks_fused_on_cuda_when_importable(monkeypatch, log_capture):
    monkeypatch.setattr(fused_ce, "fused_available", lambda: True)
    assert fused_ce.select_impl("auto", torch.device("cuda", 0), torch.bfloat16) == "fused"
    assert "fused CUDA kernel (megatron_tf._C)" in log_capture[-1]
    assert fused_ce.select_impl("auto", torch.device("cuda", 0), torch.float64) == "torch"  # dtype without a kernel
    assert fused_ce.select_impl("torch", torch.device("cuda", 0), torch.bfloat16) == "torch"


# ----------------------------------------------------------------------------------------------------------------
# Stand-in extension: the binding's signatures and checks, the reference math (CPU tensors).
# ----------------------------------------------------------------------------------------------------------------
def _check(logits, target, weights):
    assert logits.dim() == 2 and logits.stride(1) == 1
    assert target.dtype == torch.int64 and target.is_contiguous() and target.shape == (logits.shape[0],)
    assert weights.dtype == torch.float32 and weights.is_contiguous() and weights.shape == (logits.shape[0],)


def _fwd(logits, target, weights, vocab_start, eps, vocab_full, finalize, threads=0):
    _check(logits, target, weights)
    stats = ce.torch_shard_stats(logits, target, vocab_start, eps)
    if not finalize:
        return [stats]
    loss, lse = fused_ce.combine_row_stats(stats.unsqueeze(0), weights, eps, vocab_full)
    return [loss, lse]


def _bwd(logits, grad, target, weights, grad_loss, lse, vocab_start, eps, vocab_full, threads=0):
    _check(logits, target, weights)
    assert grad.shape == logits.shape and grad.dtype == logits.dtype
    assert grad_loss.dtype == torch.float32 and grad_loss.is_contiguous() and grad_loss.shape == lse.shape
    ce.torch_shard_grad(logits, target, weights, grad_loss, lse, vocab_start, eps, vocab_full, grad)


def _fwd_bwd(logits, grad, target, weights, scale, eps, threads=0):
    assert scale.dtype == torch.float32 and scale.numel() == 1
    loss, lse = _fwd(logits, target, weights, 0, eps, logits.shape[1], True)
    _bwd(logits, grad, target, weights, scale.expand(logits.shape[0]).contiguous(), lse, 0, eps, logits.shape[1])
    return [loss, lse]


@pytest.fixture
def standin(monkeypatch):
    mod = types.SimpleNamespace(cross_entropy_forward=_fwd, cross_entropy_backward=_bwd,
                                cross_entropy_forward_backward=_fwd_bwd)
    monkeypatch.setattr(fused_ce, "_ext", mod)
    monkeypatch.setattr(fused_ce, "_ext_tried", True)
    return mod


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("inplace", [False, True])
def test_fused_function_plumbing_matches_reference(standin, eps, inplace):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 21, generator=g)
    target = torch.randint(0, 21, (3, 4), generator=g)
    mask = torch.rand(3, 4, generator=g) > 0.3
    up = torch.randn(3, 4, generator=g)
    x_ref = logits.clone().requires_grad_(True)
    ref = ce.vocab_parallel_cross_entropy(x_ref, target, mask, impl="torch", label_smoothing=eps)
    (g_ref,) = torch.autograd.grad(ref, x_ref, up)
    l2d, t1, w1, shape = ce._prepare(logits.clone(), target, mask, eps)
    leaf = l2d.clone().requires_grad_(True)
    loss = fused_ce.FusedCrossEntropyFunction.apply(leaf, t1, w1, None, eps, 0, 21, 1, inplace)
    (grad,) = torch.autograd.grad(loss.view(shape), leaf, up.expand(3, 4))  # expanded upstream: made contiguous
    torch.testing.assert_close(loss.view(shape), ref, rtol=0, atol=0)
    torch.testing.assert_close(grad.view_as(g_ref), g_ref, rtol=1e-6, atol=1e-8)
    assert (grad.data_ptr() == leaf.data_ptr()) == inplace


@pytest.mark.parametrize("inplace", [False, True])
def test_fused_loss_and_grad_tp1_uses_the_one_pass_kernel(standin, monkeypatch, inplace):
    calls = []
    monkeypatch.setattr(standin, "cross_entropy_forward_backward",
                        lambda *a, **k: calls.append("fwd_bwd") or _fwd_bwd(*a, **k))
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(9, 13, generator=g)
    target = torch.randint(0, 13, (9,), generator=g)
    mask = torch.rand(9, generator=g) > 0.3
    scale = torch.tensor(1 / 7)
    loss_ref, grad_ref = ce.cross_entropy_loss_and_grad(logits, target, mask, scale, impl="torch")
    buf = logits.clone()
    l2d, t1, w1, _ = ce._prepare(buf, target, mask, 0.0)
    loss, grad = fused_ce.fused_loss_and_grad(l2d, t1, w1, scale, None, 0.0, 0, 13, 1, inplace=inplace)
    assert calls == ["fwd_bwd"]
    torch.testing.assert_close(loss, loss_ref, rtol=0, atol=0)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-6, atol=1e-9)
    assert (grad.data_ptr() == buf.data_ptr()) == inplace
