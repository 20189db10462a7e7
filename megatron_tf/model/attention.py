"""Causal self-attention with grouped-query attention, RoPE and tensor parallelism (heads split over TP ranks).

Layout: hidden states are [s, b, h] (Megatron's order; [s/tp, b, h] under sequence parallelism).
linear_qkv is a ColumnParallelLinear with output blocks (Q, K, V) = (nq*d, ng*d, ng*d): the full weight is
[all query heads; all key heads; all value heads] in head order (Hugging Face Llama's q/k/v order, NOT Megatron's
per-group interleaving), and TP rank r holds query heads [r*nq/tp, (r+1)*nq/tp) and key/value heads
[r*ng/tp, (r+1)*ng/tp) -- consistent for GQA since query head j uses kv head j // (nq/ng).
linear_proj is a RowParallelLinear over the concatenated heads.

Kernels: torch.nn.functional.scaled_dot_product_attention(is_causal=True) (FlashAttention-2 / memory-efficient /
math backends chosen by torch), or flash_attn.flash_attn_func when the flash-attn package imports, the tensors
are on CUDA and in fp16/bf16 (attention_backend auto|flash). The choice is logged once per configuration.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from megatron_tf.parallel.groups import group_size
from megatron_tf.parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron_tf.utils.logging import get_logger

from .rope import apply_rope

log = get_logger(__name__)

@functools.cache
def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func
    except Exception:
        return None
    return flash_attn_func


@functools.cache
def _log_choice(backend: str, device_type: str, dtype: str, gqa: str) -> None:
    log.info("attention: %s on %s (%s, %s)", backend, device_type, dtype, gqa)


@functools.cache
def _sdpa_gqa_supported() -> bool:
    try:
        return "enable_gqa" in inspect.signature(F.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):  # builtin without a signature
        return torch.__version__ >= "2.5"


def core_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                   backend: str = "auto") -> torch.Tensor:
    """Causal attention. q [s, b, nq, d], k/v [s, b, ng, d] (nq a multiple of ng) -> [s, b, nq * d]."""
    s, b, nq, d = q.shape
    ng = k.shape[2]
    use_flash = False
    if backend in ("auto", "flash"):
        fa = _flash_attn_func()
        ok = fa is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
        if backend == "flash" and not ok:
            raise RuntimeError("attention_backend=flash needs the flash-attn package, CUDA tensors and fp16/bf16 "
                               f"(found flash-attn={'yes' if fa is not None else 'no'}, device {q.device.type}, "
                               f"dtype {q.dtype})")
        use_flash = ok
    if use_flash:
        _log_choice("flash_attn.flash_attn_func", q.device.type, str(q.dtype), f"nq={nq}, ng={ng}")
        out = _flash_attn_func()(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), dropout_p=dropout_p,
                                 causal=True)  # [b, s, nq, d]
        return out.transpose(0, 1).reshape(s, b, nq * d)
    # SDPA wants [b, heads, s, d]
    qt, kt, vt = (t.permute(1, 2, 0, 3) for t in (q, k, v))
    kwargs = {}
    if ng != nq:
        if _sdpa_gqa_supported():
            kwargs["enable_gqa"] = True
            gqa = f"gqa nq={nq} ng={ng} (enable_gqa)"
        else:
            rep = nq // ng
            kt, vt = kt.repeat_interleave(rep, dim=1), vt.repeat_interleave(rep, dim=1)
            gqa = f"gqa nq={nq} ng={ng} (repeat_interleave)"
    else:
        gqa = f"mha nq={nq}"
    _log_choice("torch scaled_dot_product_attention", q.device.type, str(q.dtype), gqa)
    out = F.scaled_dot_product_attention(qt, kt, vt, dropout_p=dropout_p, is_causal=True, **kwargs)
    return out.permute(2, 0, 1, 3).reshape(s, b, nq * d)


class SelfAttention(nn.Module):
    def __init__(self, config, tp_group=None, rng=None, device=None):
        super().__init__()
        tp = group_size(tp_group)
        config.check_tensor_parallel(tp)
        nq, ng, d, h = config.num_attention_heads, config.num_kv_heads, config.head_dim, config.hidden_size
        self.num_heads_local, self.num_groups_local, self.head_dim = nq // tp, ng // tp, d
        self.attention_dropout = config.attention_dropout
        self.backend = config.attention_backend
        self.rng = rng  # ModelParallelRNG: dropout masks differ across TP ranks (different heads)
        self.linear_qkv = ColumnParallelLinear(h, (nq + 2 * ng) * d, tp_group,
                                               sequence_parallel=config.sequence_parallel,
                                               output_chunks=(nq * d, ng * d, ng * d), device=device)
        self.linear_proj = RowParallelLinear(nq * d, h, tp_group, input_is_parallel=True,
                                             sequence_parallel=config.sequence_parallel, device=device)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        qkv = self.linear_qkv(x)  # [s, b, (nq + 2 ng) d / tp]
        s, b = qkv.shape[:2]
        nq, ng, d = self.num_heads_local, self.num_groups_local, self.head_dim
        q, k, v = qkv.split((nq * d, ng * d, ng * d), dim=-1)
        q = apply_rope(q.view(s, b, nq, d), cos, sin)
        k = apply_rope(k.view(s, b, ng, d), cos, sin)
        v = v.view(s, b, ng, d)
        p = self.attention_dropout if self.training else 0.0
        ctx = self.rng.fork(x.device) if (p > 0 and self.rng is not None) else contextlib.nullcontext()
        with ctx:
            out = core_attention(q, k, v, p, self.backend)
        return self.linear_proj(out)
