"""Annotation compute: FLOPs of scoring a corpus with the biLM classifier, against pretraining FLOPs.

Forward FLOPs of one LM up to layer l (2 FLOPs per multiply-add; the counting of model/flops.py with
causal_attention=True, minus what annotation never computes):

    per position, per block   2 h (nq + 2 ng) d + 2 nq d h + (6 h f swiglu | 4 h f relu2)      (dense)
    per window of length m    2 nq d m^2 per block                                              (causal QK^T, AV)
    blocks run                l + 1 (the hook of layer l stops the forward pass; l = -1: none)
    not computed              the final norm and the output layer (2 h V), the blocks after l

Positions read per document of n tokens: m = n + 1 (the leading separator) in windows of W with overlap M
(windows.py): m + (K - 1) M positions. Both LMs of a bidirectional classifier do this; the probe adds 2 d_feat
FLOPs per token (logistic) or 2 (d_feat hidden + hidden) (MLP).

Pretraining compute of the filtered model: 6 N D (Kaplan et al. 2020; forward + backward, N parameters, D tokens).
The paper's ratio (`paper_arithmetic`): a 224M-parameter biLM (two 112M LMs) annotating the corpus of a 1.8B model:
annotation 2 x 224M = 448 MFLOP per token if every parameter is used once per token, pretraining 6 x 1.8B = 10.8
GFLOP per token, ratio 4.1% with every token of the corpus annotated once and trained on once. docs/classifier.md
shows what brings it under 1% (stopping at the probed layer, no output layer, the embedding costs no FLOPs).
"""

from __future__ import annotations

import numpy as np

from ...model.config import ModelConfig
from .windows import window_cost


def lm_flops(cfg: ModelConfig, layer: int, positions: int, sum_sq: int) -> float:
    """Forward FLOPs of one LM run to layer `layer` over windows with `positions` positions in total and
    `sum_sq` = sum of squared window lengths."""
    h, f, d = cfg.hidden_size, cfg.ffn_hidden_size, cfg.head_dim
    nq, ng = cfg.num_attention_heads, cfg.num_kv_heads
    blocks = layer + 1
    dense = 2 * h * (nq + 2 * ng) * d + 2 * nq * d * h + (6 if cfg.activation == "swiglu" else 4) * h * f
    return float(blocks * (dense * positions + 2 * nq * d * sum_sq))


def probe_flops_per_token(probe_cfg: dict) -> float:
    d = int(probe_cfg["dim"])
    if probe_cfg["kind"] == "mlp":
        return 2.0 * (d * int(probe_cfg["hidden"]) + int(probe_cfg["hidden"]))
    return 2.0 * d


def annotation_flops(doc_lengths: np.ndarray, lm_configs: list[ModelConfig], layer: int, window: int, context: int,
                     probe_cfg: dict) -> dict:
    """FLOPs of annotating documents of the given token counts (module doc)."""
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    positions = sum_sq = 0
    for a in range(0, lengths.size, 1 << 22):  # bounded temporaries for billions of documents
        n = lengths[a : a + (1 << 22)]
        p, q = window_cost(n + (n > 0), window, context)
        positions, sum_sq = positions + p, sum_sq + q
    tokens = int(lengths.sum())
    lms = sum(lm_flops(c, layer, positions, sum_sq) for c in lm_configs)
    total = lms + probe_flops_per_token(probe_cfg) * tokens
    return {"tokens": tokens, "positions_per_lm": positions, "read_overhead": positions / max(tokens, 1),
            "flops": total, "flops_per_token": total / max(tokens, 1)}


def pretraining_flops(params: float, tokens: float) -> float:
    return 6.0 * float(params) * float(tokens)


def cost_lines(acc: dict, pretrain_params: float | None, pretrain_tokens: float | None) -> list[str]:
    lines = [f"annotation compute: {acc['flops']:.4g} FLOPs, {acc['flops_per_token']:.4g} FLOPs/token "
             f"({acc['read_overhead']:.3f} positions read per token per LM: separator + window overlap)"]
    if pretrain_params:
        per_tok = 6.0 * pretrain_params
        lines.append(f"  per token of data: {acc['flops_per_token']:.4g} / (6 x {pretrain_params:.4g}) = "
                     f"{acc['flops_per_token'] / per_tok:.3%} of the pretraining compute of an N = "
                     f"{pretrain_params:.4g} model trained once on the annotated tokens")
        d = pretrain_tokens if pretrain_tokens else acc["tokens"]
        lines.append(f"  this dataset: {acc['flops']:.4g} / (6 N D = 6 x {pretrain_params:.4g} x {d:.4g}) = "
                     f"{acc['flops'] / pretraining_flops(pretrain_params, d):.4%}")
    return lines


def paper_arithmetic(classifier_params: float = 224e6, model_params: float = 1.8e9) -> dict:
    """2 N_cls FLOPs per token (both LMs, every parameter once, forward only) vs 6 N_model."""
    ann = 2.0 * classifier_params
    pre = 6.0 * model_params
    return {"classifier_params": classifier_params, "model_params": model_params,
            "annotation_flops_per_token": ann, "pretraining_flops_per_token": pre, "ratio": ann / pre}
