"""Fused LM head + masked vocab-parallel cross-entropy: logits are never materialised for the whole batch.

    loss = fused_linear_cross_entropy(hidden, weight, target, loss_mask, tp_group=None, label_smoothing=0.0)

- hidden [..., h] (the final-norm output), weight [V/tp, h] (this TP rank's shard of the output layer, rank r
  holding ids [r*V/tp, (r+1)*V/tp)), target int64 [...] global ids, loss_mask [...] bool or float weights.
- returns the per-token loss [...] in fp32 (fp64 for fp64 inputs): weight * CE, exactly 0 where the weight is 0;
  the same contract as megatron_tf.parallel.cross_entropy.vocab_parallel_cross_entropy(hidden @ weight.T, ...), so
  the trainer's normalisation (sum / global learned-token count, megatron_tf/training/loss.py) is unchanged.
- gradients for hidden and weight; masked rows get exactly zero hidden gradient and add exactly zero to the weight
  gradient. Under TP the hidden gradient is this shard's partial sum (the model's copy_to_tp_region all-reduces it).

Algorithm (this file: the exact PyTorch reference path; megatron_tf/ops/flce_cuda.py: the CUDA kernels):
1. Compaction on the device, no host sync: pos = cumsum(active) - 1; unmasked row i goes to slot pos[i] of a
   buffer with the FIXED capacity N (masked rows are scattered into a dump slot N that is dropped); count =
   active.sum() stays a device tensor. Slots >= count hold zero hidden rows and get coefficient 0. Every shape is
   static and nothing calls .item()/.nonzero(), so the whole forward + backward can be captured in a CUDA graph
   and replayed with a different mask. The reference still computes on all N slots (torch cannot read a device
   count without a sync); the CUDA kernels read `count` on the device and skip tiles past it, so their cost
   scales with the number of unmasked rows.
2. Forward: for each row chunk and vocabulary chunk, logits = h_c @ W_v^T in fp32 (fp64 for fp64 inputs) and an
   online softmax keeps (running max, running sum-exp) per row; the target logit and, with label smoothing, the
   sum of the row's logits are dot products (h . W[target], h . sum_v W_v). Per-shard row stats (lse_r, x_t[,
   sum_x]) then go through megatron_tf/ops/row_stats.py: ONE all-gather of 8 bytes per row (fp32 pair (lse_r,
   x_t); lse_r carries the max and sum-exp in one number, and the target logit must travel anyway) -- 12 bytes
   with label smoothing -- and a local combine.
3. Backward (recompute, 4 GEMM-equivalents in all with the forward): per vocabulary chunk v and row chunk c,
   d = (exp(logits - lse) - eps/V) * coef - (1 - eps) * coef * onehot, coef = upstream * weight (0 on masked and
   unused slots); grad_h[c] += d @ W_v (fp32 accumulator [N, h]); grad_W[v] = sum_c d^T @ h_c accumulated in fp32
   and rounded ONCE to the weight dtype. Temporaries: one [rows, vocab] fp32 chunk, the fp32 [N, h] accumulator
   and one [vocab chunk, h] fp32 accumulator.
"""

from __future__ import annotations

import torch

from megatron_tf.ops.row_stats import combine_row_stats, gather_row_stats, group_size_and_rank

# Chunk sizes of the reference (elements of the fp32 [rows, vocab] temporary: rows * vocab <= _CHUNK_ELEMS).
_CHUNK_ELEMS = 1 << 24
_VOCAB_CHUNK = 8192
IMPLS = ("auto", "torch", "cuda")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------------------------
# Compaction (shared by the reference and the CUDA path)
# ----------------------------------------------------------------------------------------------------------------
def compact_rows(weights: torch.Tensor):
    """(order [N] int64, pos [N] int64, count [1] int64, active [N] bool), all on the device, no host sync.

    order[j] = original row of compact slot j for j < count (0 for the unused slots j >= count); pos[i] = compact
    slot of unmasked row i (garbage for masked rows: never used unselected)."""
    n = weights.shape[0]
    active = weights != 0
    csum = torch.cumsum(active.to(torch.int64), 0)
    pos = csum - 1
    dest = torch.where(active, pos, torch.full_like(pos, n))  # masked rows -> the dump slot n
    order = torch.zeros(n + 1, dtype=torch.int64, device=weights.device)
    order.scatter_(0, dest, torch.arange(n, device=weights.device))
    count = csum[-1:] if n else torch.zeros(1, dtype=torch.int64, device=weights.device)
    return order[:n], pos, count, active


def compact_hidden(hidden2d: torch.Tensor, order: torch.Tensor, count: torch.Tensor, cdt: torch.dtype):
    """Compacted hidden rows [N, h] in cdt; slots >= count are exactly 0 (NaN in masked rows is never propagated)."""
    valid = torch.arange(order.shape[0], device=order.device) < count
    return torch.where(valid[:, None], hidden2d.index_select(0, order).to(cdt),
                       torch.zeros((), dtype=cdt, device=hidden2d.device)), valid


def uncompact(values: torch.Tensor, pos: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """values[pos[i]] on unmasked rows, exact 0 on masked rows (for [N] or [N, h] values)."""
    picked = values.index_select(0, pos.clamp(min=0))
    keep = active.view(-1, *([1] * (values.dim() - 1)))
    return torch.where(keep, picked, torch.zeros((), dtype=values.dtype, device=values.device))


def _row_chunks(n: int, width: int):
    step = max(1, _CHUNK_ELEMS // max(1, width))
    return [slice(r, min(r + step, n)) for r in range(0, n, step)]


def _vocab_chunks(v: int):
    return [slice(c, min(c + _VOCAB_CHUNK, v)) for c in range(0, v, _VOCAB_CHUNK)]


def _target_local(target_c: torch.Tensor, vocab_start: int, v: int):
    local = target_c - vocab_start
    in_shard = (local >= 0) & (local < v)
    return local.clamp(0, max(v - 1, 0)), in_shard


# ----------------------------------------------------------------------------------------------------------------
# Reference forward / backward on compacted rows
# ----------------------------------------------------------------------------------------------------------------
def reference_shard_stats(hc: torch.Tensor, weight: torch.Tensor, target_c: torch.Tensor, vocab_start: int,
                          eps: float) -> torch.Tensor:
    """Per-slot (lse_r, target logit or 0[, sum of logits]) of this vocabulary shard, [N, 2 or 3] in hc's dtype.
    hc: compacted hidden in the compute dtype; target_c: targets in compact order."""
    n, v, cdt = hc.shape[0], weight.shape[0], hc.dtype
    stats = torch.empty(n, 3 if eps else 2, dtype=cdt, device=hc.device)
    idx, in_shard = _target_local(target_c, vocab_start, v)
    x_t = (hc * weight.index_select(0, idx).to(cdt)).sum(1)
    stats[:, 1] = torch.where(in_shard, x_t, torch.zeros((), dtype=cdt, device=hc.device))
    if eps:
        stats[:, 2] = hc @ weight.to(cdt).sum(0)
    vchunks = [(vs, weight[vs].to(cdt)) for vs in _vocab_chunks(v)]
    for rows in _row_chunks(n, min(v, _VOCAB_CHUNK)):
        m = torch.full((rows.stop - rows.start,), float("-inf"), dtype=cdt, device=hc.device)
        s = torch.zeros_like(m)
        for _, w_v in vchunks:
            x = hc[rows] @ w_v.T  # one [rows, vocab chunk] temporary
            m_new = torch.maximum(m, x.amax(1))
            s = s * torch.exp(m - m_new) + torch.exp(x - m_new[:, None]).sum(1)
            m = m_new
        stats[rows, 0] = m + torch.log(s)
    return stats


def reference_shard_grads(hc: torch.Tensor, weight: torch.Tensor, target_c: torch.Tensor, coef: torch.Tensor,
                          lse: torch.Tensor, vocab_start: int, eps: float, vocab_full: int):
    """(grad_hc [N, h] in the compute dtype, grad_weight [V/tp, h] in weight's dtype), rounded once.
    coef [N]: upstream * loss weight per compact slot (0 on unused slots)."""
    n, v, cdt = hc.shape[0], weight.shape[0], hc.dtype
    grad_hc = torch.zeros_like(hc)
    grad_w = torch.empty_like(weight)
    idx, in_shard = _target_local(target_c, vocab_start, v)
    hot = -(1.0 - eps) * coef * in_shard.to(cdt)
    for vs in _vocab_chunks(v):
        w_v = weight[vs].to(cdt)
        acc = torch.zeros_like(w_v)
        for rows in _row_chunks(n, vs.stop - vs.start):
            d = torch.exp(hc[rows] @ w_v.T - lse[rows, None])
            if eps:
                d.sub_(eps / vocab_full)
            d.mul_(coef[rows, None])
            loc = idx[rows] - vs.start
            here = (loc >= 0) & (loc < vs.stop - vs.start)
            d.scatter_add_(1, loc.clamp(0, vs.stop - vs.start - 1)[:, None],
                           torch.where(here, hot[rows], torch.zeros((), dtype=cdt, device=hc.device))[:, None])
            grad_hc[rows] += d @ w_v
            acc += d.T @ hc[rows]
        grad_w[vs] = acc  # the one rounding to the weight dtype
    return grad_hc, grad_w


class ReferenceFusedLinearCrossEntropy(torch.autograd.Function):
    """The exact PyTorch path. forward(hidden2d, weight, target1d, weights1d, group, eps, vocab_start, vocab_full)
    -> per-token loss [N]."""

    @staticmethod
    def forward(ctx, hidden2d, weight, target, weights, group, eps, vocab_start, vocab_full):
        cdt = compute_dtype(hidden2d.dtype)
        order, pos, count, active = compact_rows(weights)
        hc, _ = compact_hidden(hidden2d, order, count, cdt)
        target_c = target.index_select(0, order)
        stats = reference_shard_stats(hc, weight, target_c, vocab_start, eps)
        w_c = weights.index_select(0, order).to(cdt) * (torch.arange(order.shape[0], device=order.device) < count)
        loss_c, lse = combine_row_stats(gather_row_stats(stats, group), w_c, eps, vocab_full)
        ctx.save_for_backward(hidden2d, weight, target, weights, lse, order, pos, count)
        ctx.cfg = (eps, vocab_start, vocab_full)
        return uncompact(loss_c, pos, active)

    @staticmethod
    def backward(ctx, grad_loss):
        hidden2d, weight, target, weights, lse, order, pos, count = ctx.saved_tensors
        eps, vocab_start, vocab_full = ctx.cfg
        cdt = compute_dtype(hidden2d.dtype)
        active = weights != 0
        hc, valid = compact_hidden(hidden2d, order, count, cdt)
        coef = (grad_loss.to(cdt) * weights.to(cdt)).index_select(0, order)
        coef = torch.where(valid, coef, torch.zeros((), dtype=cdt, device=coef.device))
        lse = torch.where(valid, lse, torch.zeros((), dtype=cdt, device=lse.device))  # unused slots: finite
        grad_hc, grad_w = reference_shard_grads(hc, weight, target.index_select(0, order), coef, lse, vocab_start,
                                                eps, vocab_full)
        grad_h = uncompact(grad_hc, pos, active).to(hidden2d.dtype)
        return grad_h, grad_w, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------------------------
def _prepare(hidden, weight, target, loss_mask, label_smoothing):
    """Validate; return (hidden2d, target1d int64, weights1d, batch shape)."""
    name = "fused_linear_cross_entropy"
    if not (isinstance(hidden, torch.Tensor) and hidden.dim() >= 1 and hidden.is_floating_point()):
        raise ValueError(f"{name}: hidden must be a floating tensor [..., h], got {type(hidden).__name__} "
                         f"{getattr(hidden, 'dtype', '')} {tuple(getattr(hidden, 'shape', ()))}")
    if not (isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[1] == hidden.shape[-1]):
        raise ValueError(f"{name}: weight must be [V/tp, h] with h = {hidden.shape[-1]} (hidden's last dim), got "
                         f"{tuple(getattr(weight, 'shape', ()))}")
    if weight.shape[0] < 1:
        raise ValueError(f"{name}: weight has an empty vocabulary shard (shape {tuple(weight.shape)})")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"{name}: hidden is {hidden.dtype} but weight is {weight.dtype}; cast one (under autocast "
                         "the caller casts both to the autocast dtype)")
    shape = hidden.shape[:-1]
    if tuple(target.shape) != tuple(shape) or target.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name}: target must be int64/int32 of shape {tuple(shape)}, got {target.dtype} "
                         f"{tuple(target.shape)}")
    if loss_mask is None:
        loss_mask = torch.ones(shape, dtype=torch.float32, device=hidden.device)
    if tuple(loss_mask.shape) != tuple(shape) or not (loss_mask.dtype == torch.bool or loss_mask.is_floating_point()):
        raise ValueError(f"{name}: loss_mask must be bool or float weights of shape {tuple(shape)}, got "
                         f"{loss_mask.dtype} {tuple(loss_mask.shape)}")
    for what, t in (("weight", weight), ("target", target), ("loss_mask", loss_mask)):
        if t.device != hidden.device:
            raise ValueError(f"{name}: {what} is on {t.device}, hidden on {hidden.device}")
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(f"{name}: label_smoothing must be in [0, 1), got {label_smoothing}")
    weights = loss_mask.reshape(-1).to(compute_dtype(hidden.dtype)).contiguous()
    return (hidden.reshape(-1, hidden.shape[-1]), target.reshape(-1).to(torch.int64).contiguous(), weights, shape)


def select_impl(impl: str, hidden: torch.Tensor) -> str:
    """"cuda" (the kernels of megatron_tf/ops/flce_cuda.py) or "torch" (this file's reference)."""
    if impl not in IMPLS:
        raise ValueError(f"fused-linear cross-entropy impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    from megatron_tf.ops import flce_cuda

    ok, why = flce_cuda.supported(hidden)
    if impl == "cuda" and not ok:
        raise RuntimeError(f"fused-linear cross-entropy impl 'cuda' is not usable: {why}")
    return "cuda" if ok else "torch"


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                               loss_mask: torch.Tensor | None, tp_group=None, label_smoothing: float = 0.0,
                               impl: str = "auto") -> torch.Tensor:
    """Per-token masked cross-entropy of hidden @ weight.T over a vocab-parallel weight (see the module docstring).
    impl: "auto" (CUDA kernels for bf16/fp16 on a GPU when the library builds/loads, else the reference),
    "torch" or "cuda"."""
    hidden2d, target1d, weights, shape = _prepare(hidden, weight, target, loss_mask, label_smoothing)
    tp, rank = group_size_and_rank(tp_group)
    v_local = weight.shape[0]
    args = (tp_group, float(label_smoothing), rank * v_local, v_local * tp)
    if select_impl(impl, hidden2d) == "cuda":
        from megatron_tf.ops.flce_cuda import CudaFusedLinearCrossEntropy

        loss = CudaFusedLinearCrossEntropy.apply(hidden2d, weight, target1d, weights.float(), *args)
    else:
        loss = ReferenceFusedLinearCrossEntropy.apply(hidden2d, weight, target1d, weights, *args)
    return loss.view(shape)


def fused_linear_objective(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                           loss_mask: torch.Tensor, scale: torch.Tensor, tp_group=None, label_smoothing: float = 0.0,
                           dtype: torch.dtype | None = None, impl: str = "auto"):
    """The trainer's microbatch objective (megatron_tf/training/loss.py: microbatch_objective's contract) with the
    output layer fused in: (backward handle (tensor, None), detached sum of the per-token losses).

    hidden [b, s, h] is the output layer's input (GPTModel.forward(output_hidden=True)), weight its [V/tp, h]
    weight; both are cast to `dtype` (the training precision: bf16 when the logits would have been bf16). The
    backward handle back-propagates scale * sum_i w_i CE_i, scale = dp_size / global learned-token count."""
    if dtype is not None:
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    per_token = fused_linear_cross_entropy(hidden, weight, labels, loss_mask, tp_group, label_smoothing, impl)
    total = per_token.sum()
    return (total * scale.to(total.dtype).squeeze(), None), total.detach()
