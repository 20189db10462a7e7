"""GPU checks of the fused LM-head cross-entropy kernels (csrc/fused_linear_cross_entropy.cu via
megatron_tf/ops/flce_cuda.py) against float64 (skipped without a CUDA device or when the kernel library does not
build/load; run by benchmarks/gpu/run_all.sh with `pytest tests/ops -k cuda`).

Masked rows carry NaN/inf hidden states, so they must never be read. Metrics: loss relative error over unmasked
rows (< 1e-5: bf16 inputs are exact in fp32 and accumulate in fp32), gradients as ||out - ref|| / ||ref|| (< 4e-3:
the dlogits are rounded once to bf16 before the two gradient GEMMs, as in Liger and CCE; the PyTorch reference on
the GPU is held to one bf16 rounding per element of its weight gradient).
"""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

from megatron_tf.ops import flce_cuda
from megatron_tf.ops import fused_linear_cross_entropy as flx
from megatron_tf.ops.row_stats import combine_row_stats

DEVICE = "cuda"
pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and flce_cuda.load_library() is not None),
                                reason=f"needs a CUDA device and the fused-linear kernel library "
                                       f"({flce_cuda.library_error() if torch.cuda.is_available() else 'no GPU'})")
LOSS_REL = 1e-5
GRAD_REL = {torch.bfloat16: 4e-3, torch.float16: 2e-3}


def _gen(*key) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(zlib.crc32(repr(key).encode()))


def _make(n, h, v, dtype, masked, key, ld_pad=0):
    g = _gen(*key)
    hidden = torch.randn(n, h + ld_pad, generator=g, device=DEVICE)[:, :h].to(dtype) if ld_pad else \
        torch.randn(n, h, generator=g, device=DEVICE).to(dtype)
    weight = (torch.randn(v, h, generator=g, device=DEVICE) * (2.0 / h ** 0.5)).to(dtype)
    target = torch.randint(0, v, (n,), generator=g, device=DEVICE)
    target[: min(n, 3)] = torch.tensor([0, v - 1, v // 2], device=DEVICE)[: min(n, 3)]
    mask = torch.rand(n, generator=g, device=DEVICE) >= masked
    if masked >= 1.0:
        mask.zero_()
    return hidden, weight, target, mask


def _poison(hidden, mask):
    out = hidden.clone()
    out[~mask] = float("nan")
    out[~mask, 0] = float("inf")
    return out


def _ref64(hidden, weight, target, mask, eps, up):
    h = torch.where(mask[:, None], hidden.double(), 0.0).requires_grad_(True)
    w = weight.double().requires_grad_(True)
    loss = F.cross_entropy(h @ w.T, target, reduction="none", label_smoothing=eps) * mask.double()
    gh, gw = torch.autograd.grad(loss, (h, w), up.double())
    return loss.detach(), gh, gw


def _rel(a, b):
    d = (a.double() - b).norm().item()
    r = b.norm().item()
    return d / r if r > 0 else d


def _run(hidden, weight, target, mask, eps, up, impl):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    loss = flx.fused_linear_cross_entropy(h, w, target, mask, label_smoothing=eps, impl=impl)
    gh, gw = torch.autograd.grad(loss, (h, w), up.float())
    return loss, gh, gw


def _check(out, ref, mask, dtype, what):
    loss, gh, gw = out
    r_loss, r_gh, r_gw = ref
    assert loss.dtype == torch.float32 and gh.dtype == dtype and gw.dtype == dtype, what
    assert torch.isfinite(loss).all() and torch.isfinite(gh).all() and torch.isfinite(gw).all(), what
    assert (loss[~mask] == 0).all() and (gh[~mask] == 0).all(), f"{what}: masked rows must be exactly 0"
    if mask.any():
        assert _rel(loss[mask], r_loss[mask]) < LOSS_REL, f"{what}: loss rel {_rel(loss[mask], r_loss[mask]):.3g}"
        assert _rel(gh, r_gh) < GRAD_REL[dtype], f"{what}: grad_hidden rel {_rel(gh, r_gh):.3g}"
        assert _rel(gw, r_gw) < GRAD_REL[dtype], f"{what}: grad_weight rel {_rel(gw, r_gw):.3g}"
    else:
        assert (gw == 0).all(), f"{what}: fully masked batch must give a zero weight gradient"


CASES = [(dtype, n, h, v, masked) for dtype in (torch.bfloat16,) for (n, h, v) in
         ((1, 64, 100), (7, 64, 1000), (300, 256, 5003), (1000, 512, 32000), (4096, 2048, 8192))
         for masked in (0.0, 0.3, 1.0)] + [(torch.float16, 300, 256, 5003, 0.3)]


@pytest.fixture
def pipeline(request):
    old = flce_cuda.set_pipeline(request.param)
    yield request.param
    flce_cuda.set_pipeline(old)


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipe", "nopipe"], indirect=True)
@pytest.mark.parametrize("dtype,n,h,v,masked", CASES,
                         ids=[f"cuda-{str(c[0])[6:]}-N{c[1]}-H{c[2]}-V{c[3]}-m{c[4]}" for c in CASES])
def test_cuda_kernels_match_float64(dtype, n, h, v, masked, pipeline):
    what = f"{dtype} N={n} H={h} V={v} masked={masked} pipeline={pipeline}"
    hidden, weight, target, mask = _make(n, h, v, dtype, masked, ("main", n, h, v, masked))
    up = torch.randn(n, generator=_gen("up", n), device=DEVICE)
    out = _run(_poison(hidden, mask), weight, target, mask, 0.0, up, "cuda")
    _check(out, _ref64(hidden, weight, target, mask, 0.0, up), mask, dtype, what)


def test_cuda_pipelined_and_single_buffered_main_loops_agree_bitwise():
    n, h, v, dtype = 777, 200, 3001, torch.bfloat16  # h = 200: 16-byte loads with a K tail of 8
    hidden, weight, target, mask = _make(n, h, v, dtype, 0.3, ("pipe-eq",))
    up = torch.randn(n, generator=_gen("up-pe"), device=DEVICE)
    outs = []
    old = flce_cuda.set_pipeline(True)
    try:
        for on in (True, False):
            flce_cuda.set_pipeline(on)
            outs.append(_run(hidden, weight, target, mask, 0.1, up, "cuda"))
    finally:
        flce_cuda.set_pipeline(old)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("ld_pad,h", [(3, 100), (0, 100), (5, 72)])
def test_cuda_unaligned_rows_and_label_smoothing(ld_pad, h):
    """Hidden sizes that are not multiples of 8 / rows at odd strides take the element-load path."""
    n, v, dtype = 257, 3001, torch.bfloat16
    hidden, weight, target, mask = _make(n, h, v, dtype, 0.3, ("unal", ld_pad, h), ld_pad=ld_pad)
    up = torch.randn(n, generator=_gen("up-u", n), device=DEVICE)
    for eps in (0.0, 0.1):
        out = _run(hidden, weight, target, mask, eps, up, "cuda")
        _check(out, _ref64(hidden, weight, target, mask, eps, up), mask, dtype, f"ld_pad={ld_pad} h={h} eps={eps}")


@pytest.mark.parametrize("vocab_chunk", ["64", "1000", "4096"])
def test_cuda_vocab_chunking(vocab_chunk, monkeypatch):
    monkeypatch.setenv("MEGATRON_TF_FLCE_VOCAB_CHUNK", vocab_chunk)
    n, h, v, dtype = 513, 128, 5003, torch.bfloat16
    hidden, weight, target, mask = _make(n, h, v, dtype, 0.3, ("chunk", vocab_chunk))
    up = torch.randn(n, generator=_gen("up-c", n), device=DEVICE)
    _check(_run(hidden, weight, target, mask, 0.0, up, "cuda"), _ref64(hidden, weight, target, mask, 0.0, up), mask,
           dtype, f"vocab_chunk={vocab_chunk}")


def test_cuda_tp2_simulated():
    """Two vocabulary shards through the kernels, combined like the all-gather does; hidden grads summed."""
    n, h, vl, dtype, eps = 700, 256, 2500, torch.bfloat16, 0.1
    hidden, weight, target, mask = _make(n, h, 2 * vl, dtype, 0.3, ("tp2",))
    target[:4] = torch.tensor([vl - 1, vl, 0, 2 * vl - 1], device=DEVICE)
    mask[:4] = True
    up = torch.randn(n, generator=_gen("up-tp"), device=DEVICE)
    order, pos, count, active = flx.compact_rows(mask.float())
    valid = torch.arange(n, device=DEVICE) < count
    shards = [weight[r * vl:(r + 1) * vl].contiguous() for r in range(2)]
    tcs = [target.index_select(0, order) - r * vl for r in range(2)]
    stats = torch.stack([flce_cuda.forward_stats(hidden, s, order, count, tcs[r], eps) for r, s in enumerate(shards)])
    loss_c, lse = combine_row_stats(stats, mask.float().index_select(0, order) * valid, eps, 2 * vl)
    loss = flx.uncompact(loss_c, pos, active)
    coef = torch.where(valid, (up * mask).index_select(0, order), 0.0).contiguous()
    lse = torch.where(valid, lse, 0.0).contiguous()
    parts = [flce_cuda.backward_grads(hidden, s, order, count, tcs[r], coef, lse, eps, 2 * vl)
             for r, s in enumerate(shards)]
    gh = flx.uncompact(parts[0][0] + parts[1][0], pos, active).to(dtype)
    gw = torch.cat([parts[0][1], parts[1][1]])
    _check((loss, gh, gw), _ref64(hidden, weight, target, mask, eps, up), mask, dtype, "TP=2 simulated")


def test_cuda_kernels_equal_reference_path_and_reference_is_exact():
    """The PyTorch reference on the GPU: fp32 inputs within 1e-5 of float64 (TF32 off), bf16 weight gradient within
    one bf16 rounding per element (plus 1e-5 of the largest element: fp32 accumulation);
    the kernels agree with it."""
    n, h, v = 600, 256, 4001
    hidden, weight, target, mask = _make(n, h, v, torch.float32, 0.3, ("refpath",))
    up = torch.randn(n, generator=_gen("up-r"), device=DEVICE)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        loss, gh, gw = _run(hidden, weight, target, mask, 0.05, up, "torch")
        r_loss, r_gh, r_gw = _ref64(hidden, weight, target, mask, 0.05, up)
        assert _rel(loss, r_loss) < 1e-5 and _rel(gh, r_gh) < 1e-5 and _rel(gw, r_gw) < 1e-5
        hb, wb = hidden.bfloat16(), weight.bfloat16()
        lb, ghb, gwb = _run(hb, wb, target, mask, 0.05, up, "torch")
        r_loss, r_gh, r_gw = _ref64(hb, wb, target, mask, 0.05, up)
        units = ((gwb.double() - r_gw).abs() / (r_gw.abs() * 2.0 ** -8 + 1e-5 * r_gw.abs().max())).max().item()
        assert units <= 1.0, f"reference bf16 weight gradient: {units:.3g} bf16 units"
        lk, ghk, gwk = _run(hb, wb, target, mask, 0.05, up, "cuda")
        torch.testing.assert_close(lk, lb, rtol=1e-5, atol=1e-5)
        assert _rel(gwk, gwb.double()) < 4e-3 and _rel(ghk, ghb.double()) < 4e-3
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def test_cuda_graph_capture_no_host_sync_and_mask_replay():
    """Forward + backward captured in a CUDA graph (any host sync would fail the capture); replay with a new mask
    and new inputs equals eager."""
    n, h, v, dtype = 512, 256, 4096, torch.bfloat16
    hidden, weight, target, mask = _make(n, h, v, dtype, 0.3, ("graph",))
    hs, ws = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    ts, ms = target.clone(), mask.clone()

    def step():
        loss = flx.fused_linear_cross_entropy(hs, ws, ts, ms, impl="cuda")
        total = loss.sum() / ms.sum().clamp(min=1)
        gh, gw = torch.autograd.grad(total, (hs, ws))
        return loss.detach(), gh, gw

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    h2, w2, t2, m2 = _make(n, h, v, dtype, 0.6, ("graph2",))
    with torch.no_grad():
        hs.copy_(h2)
        ws.copy_(w2)
    ts.copy_(t2)
    ms.copy_(m2)
    graph.replay()
    eager = step()
    for a, b in zip(static, eager):
        assert torch.equal(a, b)
    assert (static[0][~m2] == 0).all() and (static[1][~m2] == 0).all()
