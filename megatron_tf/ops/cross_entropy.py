"""Python front of the fused masked vocab-parallel cross-entropy extension (`megatron_tf._C`, built from csrc/).

- `load_extension()` imports `megatron_tf._C` (built by `pip install --no-build-isolation -e .` on a CUDA machine);
  with MEGATRON_TF_JIT_EXT=1 it JIT-builds csrc/ with torch.utils.cpp_extension.load instead (development).
- `select_impl(impl, device)` resolves "auto" | "torch" | "fused" and logs the choice once per distinct choice.
- `FusedCrossEntropyFunction` is the autograd Function over the kernels: forward = one kernel (TP = 1: loss and lse
  directly; TP > 1: per-shard stats, one all-gather, local combine); backward = one kernel writing the gradient,
  computed in fp32 and rounded once to the logits dtype, optionally in place into the logits buffer.
- `fused_loss_and_grad` returns loss and gradient for a known upstream gradient (the mean scale as a device tensor):
  with TP = 1 a single kernel reads each row, then writes its gradient.

Nothing here synchronises with the host. Kernel contract: see csrc/masked_cross_entropy.h.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from megatron_tf.ops.row_stats import combine_row_stats, gather_row_stats
from megatron_tf.utils.logging import get_logger

IMPLS = ("auto", "torch", "fused")
FUSED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

_CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "csrc")
_ext: ModuleType | None = None
_ext_error: str | None = None
_ext_tried = False
_logged: set[tuple[str, str]] = set()


def load_extension() -> ModuleType | None:
    """The compiled extension module, or None (the reason is kept in `extension_error()`)."""
    global _ext, _ext_error, _ext_tried
    if _ext_tried:
        return _ext
    _ext_tried = True
    try:
        from megatron_tf import _C  # type: ignore[attr-defined]

        if not hasattr(_C, "cross_entropy_forward"):  # built before the xent_* -> cross_entropy_* rename
            raise ImportError(f"{getattr(_C, '__file__', 'megatron_tf._C')} was built from older sources (no "
                              "cross_entropy_forward); rebuild it with `pip install --no-build-isolation -e .`")
        _ext = _C
    except (ImportError, OSError) as e:
        _ext_error = f"megatron_tf._C is not importable ({type(e).__name__}: {e})"
        if os.environ.get("MEGATRON_TF_JIT_EXT") == "1" and torch.version.cuda:
            try:
                _ext = _jit_build()
                _ext_error = None
            except Exception as je:  # a failed JIT build leaves the exact torch path working
                _ext_error += f"; JIT build failed ({type(je).__name__}: {je})"
    return _ext


def _jit_build() -> ModuleType:
    from torch.utils.cpp_extension import load

    return load(name="megatron_tf_C_jit", sources=[os.path.join(_CSRC, "binding.cpp"),
                                                   os.path.join(_CSRC, "masked_cross_entropy.cu")],
                extra_include_paths=[_CSRC], extra_cflags=["-O3"], extra_cuda_cflags=["-O3", "-lineinfo"],
                verbose=False)


def extension_error() -> str | None:
    load_extension()
    return _ext_error


def fused_available() -> bool:
    return load_extension() is not None


def select_impl(impl: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """Resolve `impl` for logits on `device`: "fused" or "torch". Logs the choice once per distinct choice."""
    if impl == "fused-linear":  # the trainer's fused LM-head loss; anything that holds logits uses "auto"
        impl = "auto"
    if impl not in IMPLS:
        raise ValueError(f"cross-entropy impl must be one of {IMPLS}, got {impl!r}")
    device = torch.device(device)
    dtype_ok = dtype is None or dtype in FUSED_DTYPES
    if impl == "torch":
        chosen, why = "torch", "requested"
    elif impl == "fused":
        if device.type != "cuda":
            raise RuntimeError(f"cross-entropy impl 'fused' needs logits on a CUDA device, got device {device}; "
                               "use impl='auto' (falls back to the PyTorch reference) or 'torch'")
        if not dtype_ok:
            raise RuntimeError(f"cross-entropy impl 'fused' supports logits of dtype {FUSED_DTYPES}, got {dtype}")
        if not fused_available():
            raise RuntimeError(f"cross-entropy impl 'fused' requested but {extension_error()}; build it on a CUDA "
                               "machine with `pip install --no-build-isolation -e .` (or set MEGATRON_TF_JIT_EXT=1)")
        chosen, why = "fused", "requested"
    elif device.type != "cuda":
        chosen, why = "torch", f"logits on {device.type}"
    elif not dtype_ok:
        chosen, why = "torch", f"dtype {dtype} not supported by the kernel"
    elif not fused_available():
        chosen, why = "torch", extension_error() or "extension unavailable"
    else:
        chosen, why = "fused", "extension importable and logits on CUDA"
    key = (impl, f"{chosen}: {why}")
    if key not in _logged:
        _logged.add(key)
        name = "fused CUDA kernel (megatron_tf._C)" if chosen == "fused" else "PyTorch reference"
        get_logger("megatron_tf.ops.cross_entropy").info("cross-entropy impl=%s -> %s (%s)", impl, name, why)
    return chosen


def _require_ext() -> ModuleType:
    ext = load_extension()
    if ext is None:
        raise RuntimeError(f"fused cross-entropy: {extension_error()}")
    return ext


def fused_forward(logits2d, target, weights, group, eps: float, vocab_start: int, vocab_full: int, tp: int):
    """(loss, lse), both fp32 [N]. TP = 1: one kernel; TP > 1: stats kernel + one all-gather + local combine."""
    ext = _require_ext()
    if tp == 1:
        loss, lse = ext.cross_entropy_forward(logits2d, target, weights, vocab_start, eps, vocab_full, True)
        return loss, lse
    (stats,) = ext.cross_entropy_forward(logits2d, target, weights, vocab_start, eps, vocab_full, False)
    return combine_row_stats(gather_row_stats(stats, group), weights, eps, vocab_full)


def fused_backward(logits2d, target, weights, grad_loss, lse, eps: float, vocab_start: int, vocab_full: int,
                   out: torch.Tensor | None = None, inplace: bool = False) -> torch.Tensor:
    """d(sum_i grad_loss_i * loss_i) / d logits2d, in the logits dtype; zeros on masked rows."""
    ext = _require_ext()
    if out is None:
        out = logits2d if inplace else torch.empty_like(logits2d)
    grad_loss = grad_loss.to(torch.float32).reshape(-1).contiguous()
    ext.cross_entropy_backward(logits2d, out, target, weights, grad_loss, lse, vocab_start, eps, vocab_full)
    return out


class FusedCrossEntropyFunction(torch.autograd.Function):
    """Autograd over the fused kernels. Inputs are prepared by megatron_tf.parallel.cross_entropy (2-D logits with
    stride 1 along the vocabulary, int64 targets, fp32 weights); `weights` gets no gradient."""

    @staticmethod
    def forward(ctx, logits2d, target, weights, group, eps, vocab_start, vocab_full, tp, inplace_backward):
        loss, lse = fused_forward(logits2d, target, weights, group, eps, vocab_start, vocab_full, tp)
        ctx.save_for_backward(logits2d, target, weights, lse)
        ctx.cfg = (eps, vocab_start, vocab_full, inplace_backward)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits2d, target, weights, lse = ctx.saved_tensors
        eps, vocab_start, vocab_full, inplace = ctx.cfg
        grad = fused_backward(logits2d, target, weights, grad_loss, lse, eps, vocab_start, vocab_full,
                              inplace=inplace)
        return grad, None, None, None, None, None, None, None, None


def fused_loss_and_grad(logits2d, target, weights, scale, group, eps: float, vocab_start: int, vocab_full: int,
                        tp: int, out: torch.Tensor | None = None, inplace: bool = False):
    """(loss [N] fp32, grad) where grad = d(sum_i scale * loss_i) / d logits2d and scale is a 1-element fp32 device
    tensor (e.g. 1 / global count of unmasked tokens). TP = 1: one kernel; TP > 1: forward, all-gather, backward."""
    ext = _require_ext()
    if out is None:
        out = logits2d if inplace else torch.empty_like(logits2d)
    scale = scale.to(device=logits2d.device, dtype=torch.float32).reshape(1)
    if tp == 1:
        loss, _ = ext.cross_entropy_forward_backward(logits2d, out, target, weights, scale, eps)
        return loss, out
    loss, lse = fused_forward(logits2d, target, weights, group, eps, vocab_start, vocab_full, tp)
    fused_backward(logits2d, target, weights, scale.expand(logits2d.shape[0]), lse, eps, vocab_start, vocab_full,
                   out=out)
    return loss, out
