"""Masked vocab-parallel cross-entropy: the PyTorch reference and the dispatcher to the fused CUDA kernels.

    loss = vocab_parallel_cross_entropy(logits, target, loss_mask, tp_group=None, impl="auto", label_smoothing=0.0)

- logits [..., V/tp]: this rank's vocabulary shard (bf16/fp16/fp32; fp64 on the torch path), rank r of `tp_group`
  holding ids [r*V/tp, (r+1)*V/tp) (equal shards: the model pads the vocabulary to a multiple of tp).
- target int64 [...] global ids; loss_mask [...] bool or float weights.
- returns the per-token loss, fp32 (fp64 for fp64 logits), shape [...]: weight * CE, exactly 0 where the weight is
  0; the backward gives weight * upstream * (softmax - one-hot) and exactly zero gradient on masked rows. The caller
  sums and divides by the global unmasked count. `loss_mask` receives no gradient.
- impl: "auto" (the fused kernel when megatron_tf._C imports and the logits are on CUDA, else torch), "torch",
  "fused". The choice is logged once (megatron_tf/ops/cross_entropy.py).
- label_smoothing eps follows torch.nn.functional.cross_entropy: (1 - eps) * NLL + eps * mean_j(-log p_j) with the mean
  over the FULL vocabulary, so results do not depend on tp (Megatron's smoothing uses the shard's mean: rank-dependent).
- inplace_backward (keyword, default False): write the gradient into the logits buffer (saves one logits-sized
  allocation; the logits are garbage afterwards, and the graph cannot be back-propagated twice).

The combine across TP ranks is one all-gather of per-row (lse_r, target logit[, sum of logits]) (megatron_tf/ops/
row_stats.py), not Megatron's three all-reduces. Neither path synchronises with the host: no .item(), no nonzero,
no shapes that depend on data (masked rows are computed and then selected away on the torch path, skipped on the
kernel path). The reference works in fp32 (fp64 for fp64 logits) over row chunks of at most _CHUNK_ELEMS elements,
so its temporaries are one fp32 chunk, not a full fp32 copy of the logits.

`cross_entropy_loss_and_grad` is the one-pass API for a trainer that knows the upstream gradient (the mean scale
1/global_count as a device tensor): it returns the loss (detached) and the gradient of the logits, for
`logits.backward(grad)`; with TP = 1 and the kernel it reads each row and writes its gradient in one launch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from megatron_tf.config.cli import opt
from megatron_tf.ops import cross_entropy as _fused
from megatron_tf.ops.row_stats import combine_row_stats, gather_row_stats, group_size_and_rank

# Rows per chunk of the reference = _CHUNK_ELEMS // shard vocabulary: at most 2^26 fp32 temporaries (256 MB).
_CHUNK_ELEMS = 1 << 26


@dataclass
class CrossEntropyConfig:
    """Loss computation."""

    cross_entropy_impl: str = field(default="auto", metadata=opt(
        "Vocab-parallel cross-entropy implementation: 'fused' CUDA kernel (megatron_tf._C), 'torch' reference, or "
        "'auto' (fused when importable and the logits are on CUDA; the choice is logged), or 'fused-linear': the "
        "training loss fuses the output layer with the cross-entropy (megatron_tf/ops/fused_linear_cross_entropy.py: "
        "logits never materialised, masked rows skipped; evaluation uses 'auto' on logits).",
        choices=("auto", "torch", "fused", "fused-linear")))


# ----------------------------------------------------------------------------------------------------------------
# PyTorch reference
# ----------------------------------------------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_slices(n_rows: int, n_cols: int):
    step = max(1, _CHUNK_ELEMS // max(1, n_cols))
    return [slice(r, min(r + step, n_rows)) for r in range(0, n_rows, step)]


def _target_in_shard(target: torch.Tensor, vocab_start: int, n_cols: int):
    local = target - vocab_start
    in_shard = (local >= 0) & (local < n_cols)
    return local.clamp(0, max(n_cols - 1, 0)), in_shard


def torch_shard_stats(logits2d: torch.Tensor, target: torch.Tensor, vocab_start: int, eps: float) -> torch.Tensor:
    """Per-row (lse_r, target logit or 0[, sum of logits]) of this shard, [N, 2 or 3] in the compute dtype."""
    n, v = logits2d.shape
    cdt = _compute_dtype(logits2d.dtype)
    stats = torch.empty(n, 3 if eps else 2, dtype=cdt, device=logits2d.device)
    idx, in_shard = _target_in_shard(target, vocab_start, v)
    x_t = logits2d.gather(1, idx.unsqueeze(1)).squeeze(1).to(cdt)
    stats[:, 1] = torch.where(in_shard, x_t, torch.zeros((), dtype=cdt, device=x_t.device))
    for rows in _row_slices(n, v):
        x = logits2d[rows].to(cdt, copy=True)  # the only full-width temporary: one chunk
        if eps:
            stats[rows, 2] = x.sum(1)
        m = x.amax(1, keepdim=True)
        stats[rows, 0] = m.squeeze(1) + x.sub_(m).exp_().sum(1).log_()
    return stats


def torch_shard_grad(logits2d, target, weights, grad_loss, lse, vocab_start: int, eps: float, vocab_full: int,
                     out: torch.Tensor) -> torch.Tensor:
    """out = d(sum_i grad_loss_i * weight_i * loss_i) / d logits2d (exact zeros on rows with weight 0)."""
    n, v = logits2d.shape
    cdt = _compute_dtype(logits2d.dtype)
    active = weights != 0
    coef = (grad_loss.to(cdt) * weights.to(cdt)).unsqueeze(1)
    lse = lse.to(cdt).unsqueeze(1)
    idx, in_shard = _target_in_shard(target, vocab_start, v)
    onehot = (-(1.0 - eps) * in_shard.to(cdt)).unsqueeze(1)
    idx = idx.unsqueeze(1)
    for rows in _row_slices(n, v):
        p = logits2d[rows].to(cdt, copy=True).sub_(lse[rows]).exp_()
        if eps:
            p.sub_(eps / vocab_full)
        p.scatter_add_(1, idx[rows], onehot[rows])
        p.mul_(coef[rows]).masked_fill_(~active[rows].unsqueeze(1), 0.0)
        out[rows].copy_(p)  # the one rounding to the logits dtype
    return out


class TorchCrossEntropyFunction(torch.autograd.Function):
    """The PyTorch reference as an autograd Function (same inputs as
    megatron_tf.ops.cross_entropy.FusedCrossEntropyFunction)."""

    @staticmethod
    def forward(ctx, logits2d, target, weights, group, eps, vocab_start, vocab_full, tp, inplace_backward):
        stats = torch_shard_stats(logits2d, target, vocab_start, eps)
        loss, lse = combine_row_stats(gather_row_stats(stats, group), weights.to(stats.dtype), eps, vocab_full)
        ctx.save_for_backward(logits2d, target, weights, lse)
        ctx.cfg = (eps, vocab_start, vocab_full, inplace_backward)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits2d, target, weights, lse = ctx.saved_tensors
        eps, vocab_start, vocab_full, inplace = ctx.cfg
        out = logits2d if inplace else torch.empty_like(logits2d)
        torch_shard_grad(logits2d, target, weights, grad_loss, lse, vocab_start, eps, vocab_full, out)
        return out, None, None, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------------------------
# Dispatcher
# ----------------------------------------------------------------------------------------------------------------
def _prepare(logits, target, loss_mask, label_smoothing):
    """Validate; return (logits2d, target1d int64, weights1d float, batch shape)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError("vocab_parallel_cross_entropy: logits must be a tensor [..., V/tp] with V/tp >= 1, got "
                         f"{type(logits).__name__} of shape {tuple(getattr(logits, 'shape', ()))}")
    if not logits.is_floating_point():
        raise ValueError(f"vocab_parallel_cross_entropy: logits must be floating point, got {logits.dtype}")
    shape = logits.shape[:-1]
    if tuple(target.shape) != tuple(shape):
        raise ValueError(f"vocab_parallel_cross_entropy: target shape {tuple(target.shape)} must equal "
                         f"logits.shape[:-1] = {tuple(shape)}")
    if target.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"vocab_parallel_cross_entropy: target must be int64 (or int32), got {target.dtype}")
    if loss_mask is None:
        loss_mask = torch.ones(shape, dtype=torch.float32, device=logits.device)
    if tuple(loss_mask.shape) != tuple(shape):
        raise ValueError(f"vocab_parallel_cross_entropy: loss_mask shape {tuple(loss_mask.shape)} must equal "
                         f"logits.shape[:-1] = {tuple(shape)}")
    if loss_mask.dtype != torch.bool and not loss_mask.is_floating_point():
        raise ValueError("vocab_parallel_cross_entropy: loss_mask must be bool or float weights, got "
                         f"{loss_mask.dtype}")
    for name, t in (("target", target), ("loss_mask", loss_mask)):
        if t.device != logits.device:
            raise ValueError(f"vocab_parallel_cross_entropy: {name} is on {t.device}, logits on {logits.device}")
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(f"vocab_parallel_cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
    logits2d = logits.reshape(-1, logits.shape[-1])
    if logits2d.shape[1] > 1 and logits2d.stride(1) != 1:
        logits2d = logits2d.contiguous()
    weights = loss_mask.reshape(-1).to(_compute_dtype(logits.dtype)).contiguous()
    return logits2d, target.reshape(-1).to(torch.int64).contiguous(), weights, shape


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor | None,
                                 tp_group=None, impl: str = "auto", label_smoothing: float = 0.0, *,
                                 inplace_backward: bool = False) -> torch.Tensor:
    """Per-token masked cross-entropy over vocabulary-sharded logits (see the module docstring)."""
    logits2d, target1d, weights, shape = _prepare(logits, target, loss_mask, label_smoothing)
    tp, rank = group_size_and_rank(tp_group)
    v_local = logits2d.shape[1]
    eps = float(label_smoothing)
    args = (tp_group, eps, rank * v_local, v_local * tp, tp, bool(inplace_backward))
    if _fused.select_impl(impl, logits.device, logits.dtype) == "fused":
        loss = _fused.FusedCrossEntropyFunction.apply(logits2d, target1d, weights, *args)
    else:
        loss = TorchCrossEntropyFunction.apply(logits2d, target1d, weights, *args)
    return loss.view(shape)


def cross_entropy_loss_and_grad(logits: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor | None,
                                grad_scale: torch.Tensor | float, tp_group=None, impl: str = "auto",
                                label_smoothing: float = 0.0, *, inplace: bool = False):
    """(per-token loss [...] detached, grad [..., V/tp]) with grad = d(sum_i grad_scale * loss_i) / d logits.

    grad_scale: a 1-element device tensor (or float), typically 1 / global unmasked count, so no host sync is
    needed. With TP = 1 and the fused kernel this is a single launch that reads every unmasked row, then writes its
    gradient; otherwise forward, the all-gather and the backward. inplace=True writes the gradient into `logits`.
    Continue back-propagation with `logits.backward(grad)`.
    """
    logits2d, target1d, weights, shape = _prepare(logits, target, loss_mask, label_smoothing)
    tp, rank = group_size_and_rank(tp_group)
    v_local = logits2d.shape[1]
    eps = float(label_smoothing)
    cdt = _compute_dtype(logits.dtype)
    scale = torch.as_tensor(grad_scale, dtype=cdt, device=logits.device).reshape(1)
    with torch.no_grad():
        logits2d = logits2d.detach()
        if _fused.select_impl(impl, logits.device, logits.dtype) == "fused":
            loss, grad = _fused.fused_loss_and_grad(logits2d, target1d, weights, scale, tp_group, eps,
                                                    rank * v_local, v_local * tp, tp, inplace=inplace)
        else:
            stats = torch_shard_stats(logits2d, target1d, rank * v_local, eps)
            loss, lse = combine_row_stats(gather_row_stats(stats, tp_group), weights, eps, v_local * tp)
            out = logits2d if inplace else torch.empty_like(logits2d)
            grad = torch_shard_grad(logits2d, target1d, weights, scale.expand(logits2d.shape[0]), lse,
                                    rank * v_local, eps, v_local * tp, out)
    return loss.view(shape), grad.view(*shape, v_local)
