"""Parameter count and training FLOPs per token of the GPT here (for MFU).

Forward matmul FLOPs per token (2 FLOPs per multiply-add), with h hidden, L layers, nq query heads, ng kv heads,
d head dim, f ffn size, s sequence length, V vocabulary (padded: it is computed):

    per layer  qkv   2 h (nq + 2 ng) d          attention  4 s nq d   (QK^T and AV over the full s x s square,
               proj  2 nq d h                                         as Narayanan et al. and PaLM count it)
               mlp   swiglu 6 h f, relu2 4 h f
    logits     2 h V

Training = forward + backward = 3 x forward (the backward pass costs two matmuls per forward matmul). Model FLOPs
exclude activation recomputation (PaLM, Chowdhery et al. 2022, appendix B), so MFU = tokens/s *
model_flops_per_token / peak FLOP/s.
Check against Narayanan et al. 2021 ("Efficient Large-Scale Language Model Training on GPU Clusters Using
Megatron-LM", section 5.1): for nq = ng, d = h/nq, a 4h GeLU-style MLP (2 matrices) and without recomputation their
per-iteration count 72 B s L h^2 (1 + s/(6h) + V/(12 L h)) divided by the B s tokens is exactly this formula
(tests/model/test_flops.py checks it). With causal_attention=True the attention term is halved (only the lower
triangle is needed; FlashAttention skips the rest).
The Kaplan et al. 2020 / Chinchilla approximation C = 6 N D counts only the 6 N part (N parameters, D tokens);
`num_parameters(config)` gives N.
"""

from __future__ import annotations

from .config import ModelConfig


def num_parameters(config: ModelConfig, tp_size: int = 1, include_embedding: bool = True) -> int:
    """Total parameters of the full model (all TP shards and PP stages), padded vocabulary included."""
    h, f, d = config.hidden_size, config.ffn_hidden_size, config.head_dim
    nq, ng = config.num_attention_heads, config.num_kv_heads
    mlp = (3 if config.activation == "swiglu" else 2) * h * f
    per_layer = h * (nq + 2 * ng) * d + nq * d * h + mlp + 2 * h
    total = config.num_layers * per_layer + h  # + final norm
    if include_embedding:
        v = config.padded_vocab_size(tp_size)
        total += v * h * (1 if config.tied_embeddings else 2)
    return total


def model_flops_per_token(config: ModelConfig, seq_length: int, tp_size: int = 1, causal_attention: bool = False,
                          training: bool = True) -> float:
    """Matmul FLOPs per token of one training step (forward + backward; forward only with training=False)."""
    h, f, d = config.hidden_size, config.ffn_hidden_size, config.head_dim
    nq, ng = config.num_attention_heads, config.num_kv_heads
    attn = 4 * seq_length * nq * d * (0.5 if causal_attention else 1.0)
    mlp = (6 if config.activation == "swiglu" else 4) * h * f
    per_layer = 2 * h * (nq + 2 * ng) * d + attn + 2 * nq * d * h + mlp
    forward = config.num_layers * per_layer + 2 * h * config.padded_vocab_size(tp_size)
    return float(forward * (3 if training else 1))
