"""The Python side of the fused-linear CUDA path (megatron_tf/ops/flce_cuda.py: compaction, pointer and leading-
dimension arithmetic, vocabulary chunks, split log-sum-exp, TP combine, autograd) on CPU, with the kernel library
replaced by a PyTorch implementation of the C ABI exactly as csrc/fused_linear_cross_entropy.h specifies it. The fake
resolves every device pointer it receives back to the live tensor that holds it, so a wrong offset, leading dimension or
count would read the wrong memory here as it would on the GPU. Checked against float64; the real kernels are checked on
a GPU by tests/ops/test_fused_linear_cross_entropy_cuda.py."""

from __future__ import annotations

import gc
import types

import pytest
import torch
import torch.nn.functional as F

from megatron_tf.ops import flce_cuda
from megatron_tf.ops import fused_linear_cross_entropy as flx
from megatron_tf.ops.row_stats import combine_row_stats

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # gc.get_objects() meets deprecated objects

BN = 64  # the kernel's vocabulary tile (splits are ranges of tiles)


def _view(ptr: int, rows: int, cols: int, ld: int) -> torch.Tensor:
    """The [rows, cols] view with row stride ld (elements) starting at device pointer ptr."""
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.numel():
            base, es = obj.untyped_storage().data_ptr(), obj.element_size()
            if base <= ptr < base + obj.untyped_storage().nbytes() and (ptr - base) % es == 0:
                st = torch.empty(0, dtype=obj.dtype).set_(obj.untyped_storage())
                need = (ptr - base) // es + (rows - 1) * ld + cols if rows else 0
                assert need <= st.numel(), "a view past the end of its buffer"
                return st.as_strided((rows, cols), (ld, 1), (ptr - base) // es)
    raise AssertionError(f"pointer {ptr:#x} is in no live tensor")


def _vec(ptr, n):
    return _view(ptr, 1, n, n)[0]


class FakeLib:
    """csrc/fused_linear_cross_entropy.h's launchers in PyTorch (fp32 math from the 16-bit inputs)."""

    def __init__(self):
        self.calls = []

    def flce_forward_stats(self, hid, ld_h, order, count, w, ld_w, n, v, h, dtype, splits, part, stream):
        self.calls.append("forward_stats")
        cnt = int(_vec(count, 1)[0])
        rows = _vec(order, n)[:cnt]
        x = _view(hid, int(rows.max()) + 1 if cnt else 0, h, ld_h)[rows].float() @ _view(w, v, h, ld_w).float().T
        tiles = -(-v // BN)
        tps = -(-tiles // splits)
        p = _view(part, splits, n, n)
        for s in range(splits):
            lo, hi = s * tps * BN, min(v, (s + 1) * tps * BN)
            p[s, :cnt] = torch.logsumexp(x[:, lo:hi], 1) if lo < hi else float("-inf")
        return 0

    def flce_target_dot(self, hid, ld_h, order, count, w, ld_w, tc, wsum, n, v, h, dtype, x_t, sum_x, stream):
        self.calls.append("target_dot")
        cnt = int(_vec(count, 1)[0])
        rows, t = _vec(order, n)[:cnt], _vec(tc, n)[:cnt]
        hr = _view(hid, int(rows.max()) + 1 if cnt else 0, h, ld_h)[rows].float()
        inside = (t >= 0) & (t < v)
        wt = _view(w, v, h, ld_w)[t.clamp(0, v - 1)].float()
        _vec(x_t, n)[:cnt] = torch.where(inside, (hr * wt).sum(1), 0.0)
        if wsum is not None:
            _vec(sum_x, n)[:cnt] = hr @ _vec(wsum, h)
        return 0

    def flce_dlogits(self, hid, ld_h, order, count, wc, ld_w, col0, n, vc, h, dtype, lse, coef, tc, eov, ome, d,
                     ld_d, stream):
        self.calls.append("dlogits")
        cnt = int(_vec(count, 1)[0])
        rows = _vec(order, n)[:cnt]
        x = _view(hid, int(rows.max()) + 1 if cnt else 0, h, ld_h)[rows].float() @ _view(wc, vc, h, ld_w).float().T
        cf = _vec(coef, n)[:cnt, None]
        g = (torch.exp(x - _vec(lse, n)[:cnt, None]) - eov) * cf
        hot = torch.arange(vc)[None, :] + col0 == _vec(tc, n)[:cnt, None]
        _view(d, n, vc, ld_d)[:cnt] = torch.where(hot, g - ome * cf, g)  # rounded once to the buffer's dtype
        return 0

    def flce_grad_hidden(self, d, ld_d, count, wc, ld_w, n, vc, h, dtype, acc, stream):
        self.calls.append("grad_hidden")
        cnt = int(_vec(count, 1)[0])
        _view(acc, n, h, h)[:cnt] += _view(d, n, vc, ld_d)[:cnt].float() @ _view(wc, vc, h, ld_w).float()
        return 0

    def flce_grad_weight(self, d, ld_d, count, hid, ld_h, order, n, vc, h, dtype, gw, ld_gw, stream):
        self.calls.append("grad_weight")
        cnt = int(_vec(count, 1)[0])
        rows = _vec(order, n)[:cnt]
        hr = _view(hid, int(rows.max()) + 1 if cnt else 0, h, ld_h)[rows].float()
        _view(gw, vc, h, ld_gw).copy_(_view(d, n, vc, ld_d)[:cnt].float().T @ hr)
        return 0


@pytest.fixture
def fake(monkeypatch):
    lib = FakeLib()
    monkeypatch.setattr(flce_cuda, "_lib", lib)
    monkeypatch.setattr(flce_cuda, "n_splits_for", lambda n, v, device: 3)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: types.SimpleNamespace(cuda_stream=0))
    return lib


def _ref64(hidden, weight, target, mask, eps, up):
    h = torch.where(mask[:, None], hidden.double(), 0.0).requires_grad_(True)
    w = weight.double().requires_grad_(True)
    loss = F.cross_entropy(h @ w.T, target, reduction="none", label_smoothing=eps) * mask.double()
    gh, gw = torch.autograd.grad(loss, (h, w), up.double())
    return loss.detach(), gh, gw


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("vocab_chunk", ["64", "100", "4096"])
def test_glue_with_spec_kernels_matches_float64(fake, monkeypatch, eps, vocab_chunk):
    monkeypatch.setenv("MEGATRON_TF_FLCE_VOCAB_CHUNK", vocab_chunk)
    g = torch.Generator().manual_seed(int(vocab_chunk) + int(eps * 10))
    n, h, v = 53, 24, 300
    hidden = torch.randn(n, h + 5, generator=g)[:, :h].bfloat16()  # rows at a stride of 29 elements
    weight = (torch.randn(v, h, generator=g) / h ** 0.5 * 2).bfloat16()
    target = torch.randint(0, v, (n,), generator=g)
    mask = torch.rand(n, generator=g) > 0.3
    up = torch.randn(n, generator=g)
    poisoned = hidden.clone()
    poisoned[~mask] = float("nan")
    hs, ws = poisoned.requires_grad_(True), weight.clone().requires_grad_(True)
    loss = flce_cuda.CudaFusedLinearCrossEntropy.apply(hs, ws, target, mask.float(), None, eps, 0, v)
    gh, gw = torch.autograd.grad(loss, (hs, ws), up)
    chunks = -(-v // min(v, max(64, int(vocab_chunk))))
    assert fake.calls == ["forward_stats", "target_dot"] + ["dlogits", "grad_hidden", "grad_weight"] * chunks
    r_loss, r_gh, r_gw = _ref64(hidden, weight, target, mask, eps, up)
    assert (loss[~mask] == 0).all() and (gh[~mask] == 0).all() and torch.isfinite(gh).all()
    assert _rel(loss, r_loss) < 1e-5
    assert _rel(gh, r_gh) < 4e-3 and _rel(gw, r_gw) < 4e-3  # dlogits rounded to bf16 once, as in the kernels


def test_glue_tp2_shards_and_fully_masked(fake):
    g = torch.Generator().manual_seed(5)
    n, h, vl = 40, 16, 130
    hidden = torch.randn(n, h, generator=g).bfloat16()
    weight = (torch.randn(2 * vl, h, generator=g) / 2).bfloat16()
    target = torch.randint(0, 2 * vl, (n,), generator=g)
    target[:4] = torch.tensor([vl - 1, vl, 0, 2 * vl - 1])
    mask = torch.rand(n, generator=g) > 0.3
    mask[:4] = True
    order, pos, count, active = flx.compact_rows(mask.float())
    stats = torch.stack([flce_cuda.forward_stats(hidden, weight[r * vl:(r + 1) * vl], order, count,
                                                 target.index_select(0, order) - r * vl, 0.1) for r in range(2)])
    valid = torch.arange(n) < count
    loss_c, _ = combine_row_stats(stats, mask.float().index_select(0, order) * valid, 0.1, 2 * vl)
    r_loss, _, _ = _ref64(hidden, weight, target, mask, 0.1, torch.ones(n))
    assert _rel(flx.uncompact(loss_c, pos, active), r_loss) < 1e-5
    none = torch.zeros(n, dtype=torch.bool)
    hs, ws = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    loss = flce_cuda.CudaFusedLinearCrossEntropy.apply(hs, ws, target, none.float(), None, 0.0, 0, 2 * vl)
    gh, gw = torch.autograd.grad(loss.sum(), (hs, ws))
    assert (loss == 0).all() and (gh == 0).all() and (gw == 0).all()
