"""The fused LM-head + masked cross-entropy reference path (megatron_tf/ops/fused_linear_cross_entropy.py) against an
independent float64 computation (materialised logits, F.cross_entropy, autograd), on CPU with tiny sizes."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_tf.ops import fused_linear_cross_entropy as flx
from megatron_tf.ops.row_stats import combine_row_stats
from megatron_tf.parallel.cross_entropy import vocab_parallel_cross_entropy
from tests.dist_utils import init_gloo, run_distributed


def _inputs(n, h, v, seed, masked=0.3, float_weights=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64).to(dtype)
    weight = (torch.randn(v, h, generator=g, dtype=torch.float64) / h ** 0.5 * 2).to(dtype)
    target = torch.randint(0, v, (n,), generator=g)
    keep = torch.rand(n, generator=g) >= masked
    mask = (torch.rand(n, generator=g) * 2 + 0.1) * keep if float_weights else keep
    return hidden, weight, target, mask


def _ref64(hidden, weight, target, mask, eps, up):
    """(loss, grad_hidden, grad_weight) in float64 from materialised logits."""
    h = hidden.detach().double().requires_grad_(True)
    w = weight.detach().double().requires_grad_(True)
    m = mask.double()
    logits = h @ w.T
    loss = F.cross_entropy(logits, target, reduction="none", label_smoothing=eps) * m
    gh, gw = torch.autograd.grad(loss, (h, w), up.double())
    return loss.detach(), gh, gw


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp(min=1e-300)).item()


def _run(hidden, weight, target, mask, eps, up, **kw):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    loss = flx.fused_linear_cross_entropy(h, w, target, mask, label_smoothing=eps, impl="torch", **kw)
    gh, gw = torch.autograd.grad(loss, (h, w), up.to(loss.dtype))
    return loss, gh, gw


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("float_weights", [False, True])
def test_fp32_matches_float64_reference(eps, float_weights):
    hidden, weight, target, mask = _inputs(37, 24, 101, seed=1, float_weights=float_weights)
    target[:3] = torch.tensor([0, 100, 50])
    mask[:3] = True if mask.dtype == torch.bool else 1.0
    up = torch.randn(37, generator=torch.Generator().manual_seed(2))
    loss, gh, gw = _run(hidden, weight, target, mask, eps, up)
    r_loss, r_gh, r_gw = _ref64(hidden, weight, target, mask, eps, up)
    assert loss.dtype == torch.float32 and gh.dtype == torch.float32 and gw.dtype == torch.float32
    assert _rel(loss, r_loss) < 1e-5 and _rel(gh, r_gh) < 1e-5 and _rel(gw, r_gw) < 1e-5, \
        (_rel(loss, r_loss), _rel(gh, r_gh), _rel(gw, r_gw))


def test_float64_inputs_are_exact_and_chunking_does_not_change_results(monkeypatch):
    hidden, weight, target, mask = _inputs(29, 16, 77, seed=3, dtype=torch.float64)
    up = torch.randn(29, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    loss, gh, gw = _run(hidden, weight, target, mask, 0.05, up)
    r_loss, r_gh, r_gw = _ref64(hidden, weight, target, mask, 0.05, up)
    for a, b in ((loss, r_loss), (gh, r_gh), (gw, r_gw)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # many small row and vocabulary chunks (online softmax across 10 vocabulary chunks, 6 row chunks)
    monkeypatch.setattr(flx, "_CHUNK_ELEMS", 40)
    monkeypatch.setattr(flx, "_VOCAB_CHUNK", 8)
    loss2, gh2, gw2 = _run(hidden, weight, target, mask, 0.05, up)
    for a, b in ((loss2, r_loss), (gh2, r_gh), (gw2, r_gw)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_equals_materialised_logits_path_of_the_project():
    """Same contract (and normalisation) as vocab_parallel_cross_entropy(hidden @ weight.T, ...)."""
    hidden, weight, target, mask = _inputs(40, 16, 64, seed=5, float_weights=True)
    ours = flx.fused_linear_cross_entropy(hidden.view(4, 10, 16), weight, target.view(4, 10), mask.view(4, 10),
                                          impl="torch")
    theirs = vocab_parallel_cross_entropy((hidden.double() @ weight.double().T).view(4, 10, 64), target.view(4, 10),
                                          mask.view(4, 10), impl="torch")
    assert ours.shape == (4, 10)
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-6)


def test_masked_rows_exact_zero_loss_and_gradient_and_never_read():
    hidden, weight, target, mask = _inputs(31, 12, 50, seed=6, masked=0.4)
    hidden[~mask] = float("nan")  # masked rows must not be read
    hidden[~mask, 0] = float("inf")
    up = torch.randn(31, generator=torch.Generator().manual_seed(7))
    loss, gh, gw = _run(hidden, weight, target, mask, 0.1, up)
    assert (loss[~mask] == 0).all() and (gh[~mask] == 0).all()
    assert torch.isfinite(loss).all() and torch.isfinite(gh).all() and torch.isfinite(gw).all()
    clean = hidden.clone()
    clean[~mask] = 0.0
    r_loss, r_gh, r_gw = _ref64(clean, weight, target, mask, 0.1, up)
    assert _rel(loss, r_loss) < 1e-5 and _rel(gh, r_gh) < 1e-5 and _rel(gw, r_gw) < 1e-5
    # the weight gradient is exactly that of the unmasked rows alone
    keep = mask.nonzero().squeeze(1)
    _, _, gw_kept = _run(hidden[keep], weight, target[keep], mask[keep], 0.1, up[keep])
    torch.testing.assert_close(gw, gw_kept, rtol=1e-6, atol=1e-7)


def test_fully_masked_batch_gives_zeros_not_nan():
    hidden, weight, target, _ = _inputs(6, 8, 20, seed=8)
    mask = torch.zeros(6, dtype=torch.bool)
    loss, gh, gw = _run(hidden, weight, target, mask, 0.0, torch.ones(6))
    assert (loss == 0).all() and (gh == 0).all() and (gw == 0).all()


def test_compaction_on_device():
    mask = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1], dtype=torch.float32)
    order, pos, count, active = flx.compact_rows(mask)
    assert count.tolist() == [4]
    assert order[:4].tolist() == [1, 2, 5, 7] and order[4:].tolist() == [0, 0, 0, 0]
    assert pos[active].tolist() == [0, 1, 2, 3]
    vals = torch.tensor([10.0, 20.0, 30.0, 40.0, 0, 0, 0, 0])
    assert flx.uncompact(vals, pos, active).tolist() == [0, 10, 20, 0, 0, 30, 0, 40]


def test_no_host_sync_forward_and_backward():
    """Everything runs under FakeTensorMode, where .item()/.nonzero()/data-dependent shapes raise."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    def run():
        h = torch.randn(6, 8, requires_grad=True)
        w = torch.randn(20, 8, requires_grad=True)
        target = torch.randint(0, 20, (6,))
        mask = torch.rand(6) > 0.3
        loss = flx.fused_linear_cross_entropy(h, w, target, mask, label_smoothing=0.1, impl="torch")
        (loss.sum() / mask.sum().clamp(min=1)).backward()
        assert h.grad.shape == (6, 8) and w.grad.shape == (20, 8)

    with FakeTensorMode(allow_non_fake_inputs=False):
        run()


def test_tp2_simulated_in_one_process():
    """Two vocabulary shards: per-shard stats, the combine the all-gather feeds, per-shard gradients; the hidden
    gradient is the sum of the shards' partial gradients (what copy_to_tp_region's backward all-reduce does)."""
    n, h, vl = 23, 12, 30
    hidden, weight, target, mask = _inputs(n, h, 2 * vl, seed=9, float_weights=True)
    target[:4] = torch.tensor([vl - 1, vl, 0, 2 * vl - 1])
    mask[:4] = 1.0
    up = torch.randn(n, generator=torch.Generator().manual_seed(10))
    for eps in (0.0, 0.1):
        order, pos, count, active = flx.compact_rows(mask)
        hc, valid = flx.compact_hidden(hidden, order, count, torch.float32)
        tc = target[order]
        shards = [weight[r * vl:(r + 1) * vl] for r in range(2)]
        stats = torch.stack([flx.reference_shard_stats(hc, s, tc, r * vl, eps) for r, s in enumerate(shards)])
        assert stats.shape == (2, n, 3 if eps else 2) and stats.dtype == torch.float32  # 8 (12) bytes per row
        w_c = mask[order] * valid
        loss_c, lse = combine_row_stats(stats, w_c, eps, 2 * vl)
        loss = flx.uncompact(loss_c, pos, active)
        coef = torch.where(valid, (up * mask)[order], torch.zeros(()))
        parts = [flx.reference_shard_grads(hc, s, tc, coef, lse, r * vl, eps, 2 * vl) for r, s in enumerate(shards)]
        gh = flx.uncompact(parts[0][0] + parts[1][0], pos, active)
        gw = torch.cat([parts[0][1], parts[1][1]])
        r_loss, r_gh, r_gw = _ref64(hidden, weight, target, mask, eps, up)
        assert _rel(loss, r_loss) < 1e-5 and _rel(gh, r_gh) < 1e-5 and _rel(gw, r_gw) < 1e-5


def test_bad_inputs_raise_clear_errors():
    hidden, weight, target, mask = _inputs(5, 8, 20, seed=11)
    with pytest.raises(ValueError, match=r"weight must be \[V/tp, h\] with h = 8"):
        flx.fused_linear_cross_entropy(hidden, weight[:, :4], target, mask)
    with pytest.raises(ValueError, match="hidden is torch.float32 but weight is torch.float64"):
        flx.fused_linear_cross_entropy(hidden, weight.double(), target, mask)
    with pytest.raises(ValueError, match=r"target must be int64/int32 of shape \(5,\)"):
        flx.fused_linear_cross_entropy(hidden, weight, target[:3], mask)
    with pytest.raises(ValueError, match="loss_mask must be bool or float"):
        flx.fused_linear_cross_entropy(hidden, weight, target, mask.long())
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        flx.fused_linear_cross_entropy(hidden, weight, target, mask, label_smoothing=1.0)
    with pytest.raises(ValueError, match="impl must be one of"):
        flx.fused_linear_cross_entropy(hidden, weight, target, mask, impl="fused")
    with pytest.raises(RuntimeError, match="impl 'cuda' is not usable"):
        flx.fused_linear_cross_entropy(hidden, weight, target, mask, impl="cuda")


def _tp2_worker(rank, world, rdzv):
    init_gloo(rank, world, rdzv)
    group = dist.new_group([0, 1])
    n, h, vl = 19, 10, 16
    hidden, weight, target, mask = _inputs(n, h, 2 * vl, seed=12, float_weights=True, dtype=torch.float64)
    target[:4] = torch.tensor([vl - 1, vl, 0, 2 * vl - 1])
    mask[:4] = 1.0
    up = torch.randn(n, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    for eps in (0.0, 0.1):
        hs = hidden.clone().requires_grad_(True)
        ws = weight[rank * vl:(rank + 1) * vl].clone().requires_grad_(True)
        loss = flx.fused_linear_cross_entropy(hs, ws, target, mask, tp_group=group, label_smoothing=eps)
        gh, gw = torch.autograd.grad(loss, (hs, ws), up)
        dist.all_reduce(gh, group=group)  # the model's copy_to_tp_region backward
        r_loss, r_gh, r_gw = _ref64(hidden, weight, target, mask, eps, up)
        torch.testing.assert_close(loss, r_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gh, r_gh, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gw, r_gw[rank * vl:(rank + 1) * vl], rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_tp2_gloo_matches_unsharded_float64():
    run_distributed(_tp2_worker, 2)


def test_trainer_fused_linear_equals_materialised_logits(tmp_path, monkeypatch):
    """--cross-entropy-impl fused-linear (hidden + output weight into the fused loss) trains exactly like the
    logits path, with the mask filter (microbatches with different learned counts) and label smoothing."""
    from megatron_tf.training import pretrain
    from tests.training.synth import make_data, tiny_args

    data = make_data(tmp_path)
    extra = ["--token-filter", "mask", "--forget-threshold", "0.5", "--eval-iters", "1", "--label-smoothing", "0.1"]
    a = pretrain(tiny_args(data, iters=3, extra=extra + ["--cross-entropy-impl", "torch"]))
    calls = []
    real = flx.fused_linear_cross_entropy
    monkeypatch.setattr(flx, "fused_linear_cross_entropy", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    b = pretrain(tiny_args(data, iters=3, extra=extra + ["--cross-entropy-impl", "fused-linear"]))
    assert len(calls) == 3 * 4 and calls[0] == (2, 16, 32)  # 3 steps x 4 microbatches of hidden [b, s, h]
    assert a.learned_per_step == b.learned_per_step and 0 < a.learned_per_step[0] < 8 * 16
    torch.testing.assert_close(b.losses, a.losses, rtol=2e-5, atol=0)
    torch.testing.assert_close(b.grad_norms, a.grad_norms, rtol=2e-5, atol=0)


def _trainer_tp2_worker(rank, world, rdzv, prefix, out):
    import json

    from megatron_tf.training import pretrain
    from tests.training.synth import tiny_args

    init_gloo(rank, world, rdzv)
    extra = ["--token-filter", "mask", "--forget-threshold", "0.5", "--eval-iters", "0", "--label-smoothing", "0.1"]
    res = {}
    tied = ["--no-untie-embeddings-and-output-weights"]
    for name, par in (("tp2_sp", ["--tensor-model-parallel-size", "2", "--sequence-parallel"]),
                      ("dp2_tied", tied), ("pp2_tied", ["--pipeline-model-parallel-size", "2", *tied])):
        r = pretrain(tiny_args(prefix, iters=3, extra=extra + par + ["--cross-entropy-impl", "fused-linear"]))
        res[name] = {"losses": r.losses, "grad_norms": r.grad_norms}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(res, f)


@pytest.mark.slow
def test_trainer_fused_linear_tp2_sp_dp2_pp2_equal_one_process(tmp_path):
    """TP = 2 (+ sequence parallel: the hidden gradient of each vocabulary shard is summed by the model's TP
    mapping), DP = 2 and PP = 2 (1F1B; the last stage's tied embedding copy is the output weight) with tied
    embeddings, on 2 gloo processes, equal the single-process logits path."""
    import json

    from megatron_tf.training import pretrain
    from tests.training.synth import make_data, tiny_args

    prefix = make_data(tmp_path)
    extra = ["--token-filter", "mask", "--forget-threshold", "0.5", "--eval-iters", "0", "--label-smoothing", "0.1"]
    ref = pretrain(tiny_args(prefix, iters=3, extra=extra + ["--cross-entropy-impl", "torch"]))
    ref_tied = pretrain(tiny_args(prefix, iters=3, extra=extra + ["--cross-entropy-impl", "torch",
                                                                 "--no-untie-embeddings-and-output-weights"]))
    out = str(tmp_path / "res.json")
    run_distributed(_trainer_tp2_worker, 2, prefix, out)
    res = json.loads(open(out).read())
    for name, r in (("tp2_sp", ref), ("dp2_tied", ref_tied), ("pp2_tied", ref_tied)):
        torch.testing.assert_close(res[name]["losses"], r.losses, rtol=2e-5, atol=0, msg=name)
        torch.testing.assert_close(res[name]["grad_norms"], r.grad_norms, rtol=2e-5, atol=0, msg=name)
