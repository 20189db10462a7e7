"""A naive float64 GPT written from the formulas (not from megatron_tf.model), for parity tests.

Takes a FULL (TP=1) state dict with megatron_tf names. RoPE is applied with explicit 2x2 rotations of the pairs
(i, i + d/2) by the angle position * base^(-2i/d), attention with an explicit causal mask, GQA by mapping query head
j to kv head j // (nq / ng).
"""

import math

import torch


def rope_reference(x, positions, base):
    """x [s, heads, d] float64, positions [s] -> rotated copy."""
    s, n, d = x.shape
    out = x.clone()
    for i in range(d // 2):
        theta = base ** (-2.0 * i / d)
        for t in range(s):
            a = float(positions[t]) * theta
            c, sn = math.cos(a), math.sin(a)
            x1, x2 = x[t, :, i], x[t, :, i + d // 2]
            out[t, :, i] = x1 * c - x2 * sn
            out[t, :, i + d // 2] = x2 * c + x1 * sn
    return out


def _norm(x, w, eps, kind):
    if kind == "RMSNorm":
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w


def reference_logits(sd, cfg, ids, positions=None):
    """ids [b, s] -> logits [b, s, V_padded] in float64."""
    sd = {k: v.double() for k, v in sd.items()}
    nq, ng, d, f = cfg.num_attention_heads, cfg.num_kv_heads, cfg.head_dim, cfg.ffn_hidden_size
    b, s = ids.shape
    positions = torch.arange(s) if positions is None else positions
    outs = []
    for bi in range(b):
        x = sd["embedding.word_embeddings.weight"][ids[bi]]  # [s, h]
        for i in range(cfg.num_layers):
            p = f"decoder.layers.{i}."
            hn = _norm(x, sd[p + "input_layernorm.weight"], cfg.norm_epsilon, cfg.normalization)
            qkv = hn @ sd[p + "self_attention.linear_qkv.weight"].t()
            q = qkv[:, :nq * d].reshape(s, nq, d)
            k = qkv[:, nq * d:(nq + ng) * d].reshape(s, ng, d)
            v = qkv[:, (nq + ng) * d:].reshape(s, ng, d)
            q, k = rope_reference(q, positions, cfg.rotary_base), rope_reference(k, positions, cfg.rotary_base)
            heads = []
            for j in range(nq):
                kv = j // (nq // ng)
                scores = q[:, j] @ k[:, kv].t() / math.sqrt(d)
                scores = scores.masked_fill(torch.triu(torch.ones(s, s, dtype=torch.bool), 1), float("-inf"))
                heads.append(torch.softmax(scores, -1) @ v[:, kv])
            x = x + torch.cat(heads, -1) @ sd[p + "self_attention.linear_proj.weight"].t()
            hn = _norm(x, sd[p + "pre_mlp_layernorm.weight"], cfg.norm_epsilon, cfg.normalization)
            a = hn @ sd[p + "mlp.linear_fc1.weight"].t()
            if cfg.activation == "swiglu":
                a = a[:, :f] * torch.sigmoid(a[:, :f]) * a[:, f:]
            else:
                a = torch.clamp(a, min=0) ** 2
            x = x + a @ sd[p + "mlp.linear_fc2.weight"].t()
        x = _norm(x, sd["decoder.final_layernorm.weight"], cfg.norm_epsilon, cfg.normalization)
        w_out = sd["embedding.word_embeddings.weight"] if cfg.tied_embeddings else sd["output_layer.weight"]
        outs.append(x @ w_out.t())
    return torch.stack(outs)
