"""Rotary position embeddings (Su et al. 2021, RoFormer), rotate-half convention.

For a head vector x in R^d (d even) at position m, pair dimension i with i + d/2 (i < d/2) and rotate each pair by
the angle m * theta_i, theta_i = base^(-2i/d):

    x'_i       = x_i cos(m theta_i) - x_{i+d/2} sin(m theta_i)
    x'_{i+d/2} = x_{i+d/2} cos(m theta_i) + x_i sin(m theta_i)

i.e. x' = x * cos + rotate_half(x) * sin with rotate_half(x) = [-x_{d/2:}, x_{:d/2}] and cos/sin repeated twice
along the head dimension. The rotation acts on the HEAD dimension of every head separately, so
<R_m q, R_n k> = <q, R_{n-m} k> depends on the positions only through n - m (tests/model/test_rope.py checks
this). This is Megatron-core's non-interleaved layout and Hugging Face Llama's `rotate_half`, so checkpoints
export to LlamaForCausalLM without permuting q/k weights. cos/sin are computed in fp32 (as HF does) and cast to the
dtype of q/k before use.
"""

from __future__ import annotations

import torch


def inv_frequencies(head_dim: int, base: float, device=None) -> torch.Tensor:
    """theta_i = base^(-2i/d), i = 0 .. d/2-1, fp32 (the same expression as HF's default RoPE init)."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (base ** exponent)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin for positions [s] or [b, s], shaped [s, 1 or b, 1, d] to broadcast over [s, b, heads, d]."""
    if position_ids.dim() == 1:
        position_ids = position_ids.unsqueeze(0)
    if position_ids.dim() != 2:
        raise ValueError(f"position_ids must be [s] or [b, s], got shape {tuple(position_ids.shape)}")
    inv = inv_frequencies(head_dim, base, position_ids.device)
    with torch.autocast(device_type=position_ids.device.type, enabled=False):
        freqs = position_ids.t().float().unsqueeze(-1) * inv  # [s, b, d/2]
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(2)  # [s, b, 1, d]
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [s, b, heads, d] by cos/sin [s, b or 1, 1, d]; the result has x's dtype."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin
