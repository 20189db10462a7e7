"""GPU checks of the fused cross-entropy kernels against a float64 reference (skipped without CUDA and the built
extension; run by benchmarks/gpu/run_cross_entropy_check.sh with `pytest tests/ops -k cuda`).

Fresh random inputs per case; outputs are poisoned with NaN before each kernel call, so every element must be
written; masked rows carry NaN/inf logits, so they must not be read. Metrics: ||out - ref|| / ||ref|| over unmasked
rows, max abs error of the loss, and for bf16 the gradient's error in units of one bf16 rounding (_bf16_units).
"""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

from megatron_tf.ops import cross_entropy as fused_ce
from megatron_tf.ops.row_stats import combine_row_stats
from megatron_tf.parallel import cross_entropy as ce

DEVICE = "cuda"
pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and fused_ce.fused_available()),
                                reason="needs a CUDA device and the built extension megatron_tf._C")

LOSS_REL, LOSS_ABS = 1e-5, 1e-4
GRAD_REL = {torch.float32: 1e-5, torch.bfloat16: 4e-3}
REF_ROWS_ELEMS = 1 << 27  # float64 reference in row chunks of at most this many elements


def _gen(*key) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(zlib.crc32(repr(key).encode()))


def _make(n, v, dtype, masked, key, offset=0):
    """logits [n, v] (masked rows NaN, one +inf), targets incl. shard edges, bool mask, fp32 weights."""
    g = _gen(*key)
    if offset:  # misaligned row starts: a view into a wider buffer
        logits = (torch.randn(n, v + offset, generator=g, device=DEVICE, dtype=torch.float32) * 3).to(dtype)
        logits = logits[:, offset:]
    else:
        logits = (torch.randn(n, v, generator=g, device=DEVICE, dtype=torch.float32) * 3).to(dtype)
    target = torch.randint(0, v, (n,), generator=g, device=DEVICE)
    edges = torch.tensor([0, v - 1, v // 2, 1 % v], device=DEVICE)[: min(n, 4)]
    target[: edges.numel()] = edges
    mask = torch.rand(n, generator=g, device=DEVICE) >= masked
    if masked >= 1.0:
        mask.zero_()
    logits.masked_fill_(~mask[:, None], float("nan"))
    logits[:, 0].masked_fill_(~mask, float("inf"))
    return logits, target, mask, mask.to(torch.float32)


def _poisoned_like(x):
    return torch.full_like(x, float("nan"))


class _Acc:
    def __init__(self):
        self.d2 = 0.0
        self.r2 = 0.0
        self.max_ulp = 0.0

    def add(self, out, ref):
        self.d2 += (out.double() - ref).pow(2).sum().item()
        self.r2 += ref.pow(2).sum().item()

    def rel(self):
        return (self.d2 / self.r2) ** 0.5 if self.r2 > 0 else self.d2 ** 0.5


def _bf16_units(out_bf16, ref64, coef64):
    """max |out - ref| / (2^-8 |ref| + 1e-6 |coef|): <= 1 means within one bf16 unit of the exact value plus fp32-level
    absolute error (1e-6 of the row's gradient scale; softmax - one-hot cancels where p is near 1 or near eps/V)."""
    if not out_bf16.numel():
        return 0.0
    bound = ref64.abs() * 2.0 ** -8 + coef64.abs() * 1e-6
    return ((out_bf16.double() - ref64).abs() / bound).max().item()


def _reference_check(logits, target, weights, eps, grads, vocab_full=None):
    """Compare per-token loss and gradients with float64, in row chunks. grads: list of (grad, upstream [N] fp64).
    Returns (loss64 [N], list of (rel error, max error in bf16 units (see _bf16_units)))."""
    n, v = logits.shape
    vocab_full = vocab_full or v
    rows = max(1, REF_ROWS_ELEMS // max(v, 1))
    loss64 = torch.empty(n, dtype=torch.float64, device=logits.device)
    accs = [_Acc() for _ in grads]
    active = weights != 0
    for r0 in range(0, n, rows):
        sl = slice(r0, min(n, r0 + rows))
        x = logits[sl].double()
        x = torch.where(active[sl, None], x, torch.zeros((), dtype=torch.float64, device=x.device))
        logp = torch.log_softmax(x, dim=1)
        nll = -logp.gather(1, target[sl, None]).squeeze(1)
        loss64[sl] = ((1 - eps) * nll - eps * logp.sum(1) / vocab_full) * weights[sl].double()
        p = logp.exp_()
        p.sub_(eps / vocab_full)
        p.scatter_add_(1, target[sl, None], torch.full_like(p[:, :1], -(1 - eps)))
        p.mul_(weights[sl, None].double())
        for (grad, up), acc in zip(grads, accs):
            ref = p * up[sl, None]
            act = active[sl]
            acc.add(grad[sl][act], ref[act])
            if grad.dtype == torch.bfloat16:
                coef = (weights[sl].double() * up[sl])[act, None].expand(-1, v)
                acc.max_ulp = max(acc.max_ulp, _bf16_units(grad[sl][act], ref[act], coef))
    loss64[~active] = 0
    return loss64, [(a.rel(), a.max_ulp) for a in accs]


def _check_loss(loss, loss64, mask, what):
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all(), what
    assert (loss[~mask] == 0).all(), f"{what}: masked rows must have loss exactly 0"
    if mask.any():
        err = (loss.double() - loss64)[mask]
        # relative to max(|ref|, 1) on average: losses near 0 (V = 1) are judged on the absolute error
        rel = (err.norm() / max(loss64[mask].norm().item(), mask.sum().item() ** 0.5)).item()
        assert rel < LOSS_REL and err.abs().max().item() < LOSS_ABS, f"{what}: loss rel {rel:.3g}"


def _check_grad(grad, mask, res, dtype, what):
    rel, ulps = res
    assert torch.isfinite(grad).all(), f"{what}: unwritten (NaN-poisoned) or non-finite gradient elements"
    assert (grad[~mask] == 0).all(), f"{what}: masked rows must get exactly zero gradient"
    assert rel < GRAD_REL[dtype], f"{what}: grad rel error {rel:.3g}"
    if dtype == torch.bfloat16:
        assert ulps <= 1.0, f"{what}: grad error {ulps:.3g} bf16 units (> 1: more than one rounding)"


def _same(a, b, what):
    """Equal up to one rounding of the logits dtype (vector and scalar paths run the same per-element math)."""
    rtol = 1e-6 if a.dtype == torch.float32 else 2 ** -7
    torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=1e-7, equal_nan=False, msg=what)


CASES = [(dtype, n, v, masked) for dtype in (torch.bfloat16, torch.float32) for n in (1, 7, 4096, 16384)
         for v in (1000, 32000, 50304, 128256) for masked in (0.0, 0.3, 1.0)]


@pytest.mark.parametrize("dtype,n,v,masked", CASES, ids=[f"cuda-{str(c[0])[6:]}-N{c[1]}-V{c[2]}-m{c[3]}"
                                                           for c in CASES])
def test_cuda_kernels_match_float64(dtype, n, v, masked):
    what = f"{dtype} N={n} V={v} masked={masked}"
    logits, target, mask, w = _make(n, v, dtype, masked, ("main", dtype, n, v, masked))
    ext = fused_ce.load_extension()
    loss, lse = ext.cross_entropy_forward(logits, target, w, 0, 0.0, v, True)
    up = torch.randn(n, generator=_gen("up", n), device=DEVICE)
    grad = _poisoned_like(logits)
    ext.cross_entropy_backward(logits, grad, target, w, up, lse, 0, 0.0, v)
    scale = (1.0 / mask.sum().clamp(min=1).float()).reshape(1)
    grad1 = _poisoned_like(logits)
    loss1, lse1 = ext.cross_entropy_forward_backward(logits, grad1, target, w, scale, 0.0)
    loss64, res = _reference_check(logits, target, w, 0.0,
                                   [(grad, up.double()), (grad1, scale.double().expand(n))])
    _check_loss(loss, loss64, mask, what + " forward")
    _check_loss(loss1, loss64, mask, what + " forward_backward")
    # the same row statistics code in both kernels
    torch.testing.assert_close(loss1, loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lse1[mask], lse[mask], rtol=1e-6, atol=1e-6)
    _check_grad(grad, mask, res[0], dtype, what + " backward")
    _check_grad(grad1, mask, res[1], dtype, what + " forward_backward")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("v,n", [(1000, 4096), (50304, 4096), (1, 7), (3, 7)])
def test_cuda_label_smoothing(dtype, v, n):
    eps = 0.1
    what = f"{dtype} N={n} V={v} eps={eps}"
    logits, target, mask, w = _make(n, v, dtype, 0.3, ("smooth", dtype, n, v))
    ext = fused_ce.load_extension()
    loss, lse = ext.cross_entropy_forward(logits, target, w, 0, eps, v, True)
    up = torch.randn(n, generator=_gen("up-s", n), device=DEVICE)
    grad = _poisoned_like(logits)
    ext.cross_entropy_backward(logits, grad, target, w, up, lse, 0, eps, v)
    grad1 = _poisoned_like(logits)
    scale = torch.full((1,), 0.5, device=DEVICE)
    loss1, _ = ext.cross_entropy_forward_backward(logits, grad1, target, w, scale, eps)
    loss64, res = _reference_check(logits, target, w, eps, [(grad, up.double()), (grad1, scale.double().expand(n))])
    m = mask
    ref_f = F.cross_entropy(logits[m].double(), target[m], reduction="none", label_smoothing=eps)
    torch.testing.assert_close(loss64[m], ref_f, rtol=1e-12, atol=1e-12)  # the reference is torch's definition
    _check_loss(loss, loss64, mask, what)
    _check_loss(loss1, loss64, mask, what + " fwd_bwd")
    _check_grad(grad, mask, res[0], dtype, what)
    _check_grad(grad1, mask, res[1], dtype, what + " fwd_bwd")


TP_CASES = [(dtype, n, vl, eps) for dtype in (torch.bfloat16, torch.float32) for n in (7, 4096)
            for vl in (1000, 1001, 50304) for eps in (0.0, 0.1)]


@pytest.mark.parametrize("dtype,n,vl,eps", TP_CASES, ids=[f"cuda-tp2-{str(c[0])[6:]}-N{c[1]}-V{c[2]}-e{c[3]}"
                                                          for c in TP_CASES])
def test_cuda_tp2_simulated(dtype, n, vl, eps):
    """Two vocabulary shards in one process (strided views of the full logits), combined like the all-gather does."""
    what = f"TP=2 {dtype} N={n} V/tp={vl} eps={eps}"
    v = 2 * vl
    logits, target, mask, w = _make(n, v, dtype, 0.3, ("tp2", dtype, n, vl, eps))
    target[: min(n, 4)] = torch.tensor([vl - 1, vl, 0, v - 1], device=DEVICE)[: min(n, 4)]  # shard edges
    ext = fused_ce.load_extension()
    shards = [logits[:, r * vl:(r + 1) * vl] for r in range(2)]
    stats = torch.stack([ext.cross_entropy_forward(s, target, w, r * vl, eps, v, False)[0]
                         for r, s in enumerate(shards)])
    assert stats.shape == (2, n, 3 if eps else 2)
    loss, lse = combine_row_stats(stats, w, eps, v)
    up = torch.randn(n, generator=_gen("up-tp", n), device=DEVICE)
    grads = []
    for r, s in enumerate(shards):
        gr = _poisoned_like(s.contiguous())
        ext.cross_entropy_backward(s, gr, target, w, up, lse, r * vl, eps, v)
        grads.append(gr)
    grad = torch.cat(grads, dim=1)
    loss64, res = _reference_check(logits, target, w, eps, [(grad, up.double())])
    _check_loss(loss, loss64, mask, what)
    _check_grad(grad, mask, res[0], dtype, what)
    loss_tp1, _ = ext.cross_entropy_forward(logits.contiguous(), target, w, 0, eps, v, True)
    torch.testing.assert_close(loss, loss_tp1, rtol=2e-6, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("v,offset", [(1000, 1), (4097, 3), (8, 5), (129, 7)])
def test_cuda_misaligned_rows_and_inplace(dtype, v, offset):
    n = 33
    what = f"{dtype} V={v} offset={offset}"
    logits, target, mask, w = _make(n, v, dtype, 0.3, ("mis", dtype, v, offset), offset=offset)
    ext = fused_ce.load_extension()
    loss, lse = ext.cross_entropy_forward(logits, target, w, 0, 0.0, v, True)
    up = torch.randn(n, generator=_gen("up-m", n), device=DEVICE)
    grad = _poisoned_like(logits.contiguous())  # differently aligned from the logits rows: scalar path
    ext.cross_entropy_backward(logits, grad, target, w, up, lse, 0, 0.0, v)
    loss64, res = _reference_check(logits, target, w, 0.0, [(grad, up.double())])
    _check_loss(loss, loss64, mask, what)
    _check_grad(grad, mask, res[0], dtype, what)
    inplace = torch.empty(n, v + offset, dtype=dtype, device=DEVICE)[:, offset:]
    inplace.copy_(logits)
    ext.cross_entropy_backward(inplace, inplace, target, w, up, lse, 0, 0.0, v)  # same alignment: vector path, in place
    _same(inplace, grad, what + " in place")
    buf = torch.empty(n, v + offset, dtype=dtype, device=DEVICE)[:, offset:]
    buf.copy_(logits)
    scale = torch.full((1,), 0.25, device=DEVICE)
    g_out = _poisoned_like(logits.contiguous())
    l1, _ = ext.cross_entropy_forward_backward(logits, g_out, target, w, scale, 0.0)
    l2, _ = ext.cross_entropy_forward_backward(buf, buf, target, w, scale, 0.0)
    torch.testing.assert_close(l1, l2, rtol=1e-6, atol=1e-6)
    _same(buf, g_out, what + " one-pass in place")


@pytest.mark.parametrize("threads", [32, 64, 128, 256, 512])
def test_cuda_block_sizes(threads):
    n, v, dtype = 257, 50304, torch.bfloat16
    logits, target, mask, w = _make(n, v, dtype, 0.3, ("threads", threads))
    ext = fused_ce.load_extension()
    loss, lse = ext.cross_entropy_forward(logits, target, w, 0, 0.0, v, True, threads)
    up = torch.randn(n, generator=_gen("up-t", threads), device=DEVICE)
    grad = _poisoned_like(logits)
    ext.cross_entropy_backward(logits, grad, target, w, up, lse, 0, 0.0, v, threads)
    loss64, res = _reference_check(logits, target, w, 0.0, [(grad, up.double())])
    _check_loss(loss, loss64, mask, f"threads={threads}")
    _check_grad(grad, mask, res[0], dtype, f"threads={threads}")
    with pytest.raises(RuntimeError, match="launch failed"):
        ext.cross_entropy_forward(logits, target, w, 0, 0.0, v, True, 48)  # not a multiple of 32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_public_api_fused_equals_torch(dtype):
    n, v = 300, 5003
    logits, target, mask, _ = _make(n, v, dtype, 0.3, ("api", dtype))
    logits = logits.view(3, 100, v)
    target, mask = target.view(3, 100), mask.view(3, 100)
    up = torch.randn(3, 100, generator=_gen("up-api"), device=DEVICE)
    out = {}
    for impl in ("torch", "fused"):
        x = logits.clone().requires_grad_(True)
        loss = ce.vocab_parallel_cross_entropy(x, target, mask, impl=impl, label_smoothing=0.05)
        (g,) = torch.autograd.grad(loss, x, up)
        out[impl] = (loss, g)
    torch.testing.assert_close(out["fused"][0], out["torch"][0], rtol=2e-6, atol=2e-5)
    torch.testing.assert_close(out["fused"][1].float(), out["torch"][1].float(), rtol=1e-2 if dtype != torch.float32
                               else 1e-5, atol=1e-6)
    assert (out["fused"][1][~mask] == 0).all()
    x = logits.clone().requires_grad_(True)
    (g_inplace,) = torch.autograd.grad(ce.vocab_parallel_cross_entropy(x, target, mask, impl="fused",
                                                                       label_smoothing=0.05, inplace_backward=True),
                                       x, up)
    assert g_inplace.data_ptr() == x.data_ptr() and torch.equal(g_inplace, out["fused"][1])


@pytest.mark.parametrize("impl", ["fused", "torch"])
def test_cuda_graph_capture_no_host_sync(impl):
    """Capturing forward + backward in a CUDA graph fails on any host synchronisation; replay must match eager."""
    n, v, dtype = 512, 32000, torch.bfloat16
    logits, target, mask, _ = _make(n, v, dtype, 0.3, ("graph", impl))
    logits = torch.nan_to_num(logits, nan=0.0, posinf=0.0)
    x = logits.clone().requires_grad_(True)
    t_s, m_s = target.clone(), mask.clone()

    def step():
        loss = ce.vocab_parallel_cross_entropy(x, t_s, m_s, impl=impl)
        count = m_s.sum().clamp(min=1)
        (g,) = torch.autograd.grad(loss.sum() / count, x)
        scale = 1.0 / count.float()
        l2, g2 = ce.cross_entropy_loss_and_grad(x.detach(), t_s, m_s, scale, impl=impl)
        return loss.detach(), g, l2, g2

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    new_logits, new_target, new_mask, _ = _make(n, v, dtype, 0.3, ("graph2", impl))
    with torch.no_grad():
        x.copy_(torch.nan_to_num(new_logits, nan=0.0, posinf=0.0))
    t_s.copy_(new_target)
    m_s.copy_(new_mask)
    graph.replay()
    eager = step()
    for a, b in zip(static, eager):
        assert torch.equal(a, b)
