"""Decoder-only GPT (pre-norm, RoPE, SwiGLU or ReLU^2, no biases) as tensor-parallel pipeline stages.

A stage (Megatron's pre_process/post_process) holds decoder layers [start, end) plus the embedding on the first
stage and the final norm + output layer on the last stage; `build_gpt_stage(config, tp_group, pp_rank, pp_size)`
splits the layers with `stage_layer_range` and initialises the weights (megatron_tf/model/init.py).

    forward(input_ids=None, position_ids=None, hidden_states=None, gather_logits=False)
      first stage:   input_ids [b, s] (int64)                      ; other stages: hidden_states from the previous one
      position_ids:  None (= arange(s)), [s] or [b, s]; EVERY stage needs the same position_ids (RoPE is per layer)
      between stages / returned by non-last stages: hidden states [s, b, h] ([s/tp, b, h] with sequence parallel;
                     the dtype is whatever the layers produced: fp32 residual stream under bf16 autocast)
      last stage:    logits [b, s, V_padded/tp], this TP rank's vocabulary shard (gather_logits=True: all of V_padded);
                     output_hidden=True: the output layer's input [b, s, h] instead (for a fused LM-head loss)

Parameter names (global layer indices on every stage; a stage's state dict is a subset of the full model's):

    embedding.word_embeddings.weight                 [V_padded/tp, h]   (also on the last stage when tied)
    decoder.layers.{i}.input_layernorm.weight        [h]
    decoder.layers.{i}.self_attention.linear_qkv.weight   [(nq + 2 ng) d / tp, h]   blocks (Q, K, V)
    decoder.layers.{i}.self_attention.linear_proj.weight  [h, nq d / tp]
    decoder.layers.{i}.pre_mlp_layernorm.weight      [h]
    decoder.layers.{i}.mlp.linear_fc1.weight         [2f/tp, h] blocks (gate, up)  (relu2: [f/tp, h])
    decoder.layers.{i}.mlp.linear_fc2.weight         [h, f/tp]
    decoder.final_layernorm.weight                   [h]
    output_layer.weight                              [V_padded/tp, h]   (untied only)

Tied embeddings with pipeline parallelism: the first and last stage both hold embedding.word_embeddings.weight,
initialised identically (same seed and name); after backward the trainer calls
`allreduce_embedding_grads(model, groups.embedding_group)` (Megatron's embedding group: first + last stage) so both
copies receive the same summed gradient. Under sequence parallelism it must also call
`megatron_tf.parallel.layers.allreduce_sequence_parallel_grads(model, tp_group)` for the norm weights.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from megatron_tf.parallel.groups import group_rank, group_size
from megatron_tf.parallel.layers import ColumnParallelLinear, VocabParallelEmbedding
from megatron_tf.parallel.mappings import (
    copy_to_tp_region,
    gather_from_sequence_parallel_region,
    gather_from_tp_region,
)
from megatron_tf.parallel.random import ModelParallelRNG

from .attention import SelfAttention
from .config import ModelConfig
from .init import init_gpt_weights
from .mlp import MLP
from .norm import build_norm
from .rope import rope_cos_sin


def stage_layer_range(config: ModelConfig, pp_rank: int, pp_size: int) -> tuple[int, int]:
    """Layers [start, end) of pipeline stage `pp_rank`.

    Even split by default (num_layers must be divisible by pp_size). With decoder_first_pipeline_num_layers and/or
    decoder_last_pipeline_num_layers (Megatron's flags) those stages get the given counts and the remaining layers
    are split evenly over the other stages. Example: 10 layers, pp 4, first 1, last 3 -> [0,1) [1,4) [4,7) [7,10).
    """
    L = config.num_layers
    if not 0 <= pp_rank < pp_size:
        raise ValueError(f"pipeline rank {pp_rank} outside [0, {pp_size})")
    if pp_size == 1:
        return 0, L
    counts: list[int | None] = [None] * pp_size
    if config.decoder_first_pipeline_num_layers is not None:
        counts[0] = config.decoder_first_pipeline_num_layers
    if config.decoder_last_pipeline_num_layers is not None:
        counts[-1] = config.decoder_last_pipeline_num_layers
    fixed = sum(c for c in counts if c is not None)
    free = [i for i, c in enumerate(counts) if c is None]
    rest = L - fixed
    if rest < 0 or (free and rest % len(free)) or (not free and rest != 0):
        raise ValueError(f"cannot split {L} layers over {pp_size} pipeline stages (first stage "
                         f"{config.decoder_first_pipeline_num_layers}, last stage "
                         f"{config.decoder_last_pipeline_num_layers}): the remaining {rest} layers must divide "
                         f"evenly over {len(free)} stages")
    for i in free:
        counts[i] = rest // len(free)
    start = sum(counts[:pp_rank])
    return start, start + counts[pp_rank]


class TransformerLayer(nn.Module):
    """x + Attn(Norm(x)), then + MLP(Norm(.)), with hidden dropout on both branches."""

    def __init__(self, config: ModelConfig, tp_group=None, rng: ModelParallelRNG | None = None, device=None):
        super().__init__()
        self.input_layernorm = build_norm(config, device)
        self.self_attention = SelfAttention(config, tp_group, rng, device)
        self.pre_mlp_layernorm = build_norm(config, device)
        self.mlp = MLP(config, tp_group, device)
        self.hidden_dropout = config.hidden_dropout
        self.sequence_parallel = config.sequence_parallel
        self.rng = rng

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        return _dropout(x, self.hidden_dropout, self.training, self.sequence_parallel, self.rng)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self._dropout(self.self_attention(self.input_layernorm(x), cos, sin))
        return x + self._dropout(self.mlp(self.pre_mlp_layernorm(x)))


def _dropout(x, p: float, training: bool, sequence_parallel: bool, rng: ModelParallelRNG | None):
    if p == 0.0 or not training:
        return x
    if sequence_parallel and rng is not None:  # each TP rank holds a different sequence chunk
        with rng.fork(x.device):
            return F.dropout(x, p, True)
    return F.dropout(x, p, True)  # replicated activations: the default generator, seeded equally across TP


class GPTEmbedding(nn.Module):
    def __init__(self, config: ModelConfig, padded_vocab: int, tp_group=None, device=None):
        super().__init__()
        self.word_embeddings = VocabParallelEmbedding(padded_vocab, config.hidden_size, tp_group,
                                                      sequence_parallel=config.sequence_parallel, device=device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(input_ids.t())  # [s, b, h] ([s/tp, b, h] with sequence parallel)


class Decoder(nn.Module):
    def __init__(self, config, layer_range, tp_group, rng, post_process, device=None):
        super().__init__()
        start, end = layer_range
        self.layers = nn.ModuleDict({str(i): TransformerLayer(config, tp_group, rng, device)
                                     for i in range(start, end)})
        self.final_layernorm = build_norm(config, device) if post_process else None


class GPTModel(nn.Module):
    """One pipeline stage of the GPT (the whole model with the defaults). See the module docstring."""

    def __init__(self, config: ModelConfig, tp_group=None, *, pre_process: bool = True, post_process: bool = True,
                 layer_range: tuple[int, int] | None = None, seed: int = 1234, device=None):
        super().__init__()
        self.config = config
        self.tp_group = tp_group
        self.tp_size = group_size(tp_group)
        config.check_tensor_parallel(self.tp_size)
        self.pre_process, self.post_process = pre_process, post_process
        self.layer_range = tuple(layer_range) if layer_range is not None else (0, config.num_layers)
        if not 0 <= self.layer_range[0] <= self.layer_range[1] <= config.num_layers:
            raise ValueError(f"layer_range {self.layer_range} outside [0, {config.num_layers}]")
        self.padded_vocab_size = config.padded_vocab_size(self.tp_size)
        self.rng = ModelParallelRNG(seed, group_rank(tp_group))
        self.share_embeddings = config.tied_embeddings
        if pre_process or (post_process and self.share_embeddings):
            self.embedding = GPTEmbedding(config, self.padded_vocab_size, tp_group, device)
        else:
            self.embedding = None
        self.decoder = Decoder(config, self.layer_range, tp_group, self.rng, post_process, device)
        if post_process and not self.share_embeddings:
            self.output_layer = ColumnParallelLinear(config.hidden_size, self.padded_vocab_size, tp_group,
                                                     device=device)
        else:
            self.output_layer = None

    # ---- weights -------------------------------------------------------------------------------------------------
    def init_weights(self, seed: int) -> None:
        init_gpt_weights(self, seed)

    def output_weight(self) -> torch.Tensor:
        if not self.post_process:
            raise RuntimeError("output_weight: this stage has no output layer (post_process=False)")
        return self.embedding.word_embeddings.weight if self.share_embeddings else self.output_layer.weight

    def shared_embedding_weight(self) -> nn.Parameter | None:
        """The tied embedding weight on a first or last stage, else None."""
        if self.share_embeddings and self.embedding is not None:
            return self.embedding.word_embeddings.weight
        return None

    # ---- forward -------------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                hidden_states: torch.Tensor | None = None, gather_logits: bool = False,
                output_hidden: bool = False) -> torch.Tensor:
        cfg = self.config
        if self.pre_process:
            if input_ids is None or input_ids.dim() != 2:
                raise ValueError("the first pipeline stage needs input_ids [b, s]")
            if cfg.sequence_parallel and input_ids.shape[1] % self.tp_size:
                raise ValueError(f"sequence parallelism: sequence length {input_ids.shape[1]} is not divisible by "
                                 f"the tensor-parallel size {self.tp_size}")
            x = self.embedding(input_ids)
            x = _dropout(x, cfg.hidden_dropout, self.training, cfg.sequence_parallel, self.rng)
        else:
            if hidden_states is None:
                raise ValueError("a pipeline stage without pre_process needs hidden_states [s, b, h]")
            x = hidden_states
        # full sequence length (the hidden states hold s/tp positions under sequence parallelism)
        s = input_ids.shape[1] if self.pre_process else x.shape[0] * (self.tp_size if cfg.sequence_parallel else 1)
        if position_ids is None:
            position_ids = torch.arange(s, device=x.device)
        cos, sin = rope_cos_sin(position_ids.to(x.device), cfg.head_dim, cfg.rotary_base)
        if cos.shape[0] != s:
            raise ValueError(f"position_ids cover {cos.shape[0]} positions, the sequence has {s}")
        recompute = cfg.recompute_granularity == "full" and torch.is_grad_enabled()
        for layer in self.decoder.layers.values():
            x = self._recomputed(layer, x, cos, sin) if recompute else layer(x, cos, sin)
        if not self.post_process:
            return x
        x = self.decoder.final_layernorm(x)
        if cfg.sequence_parallel:
            x = gather_from_sequence_parallel_region(x, self.tp_group, tensor_parallel_output_grad=True)
        else:
            x = copy_to_tp_region(x, self.tp_group)
        # [s, b, h] -> [b, s, h] before the output layer, so the (large) logits come out [b, s, V/tp] contiguous
        if output_hidden:  # the input of the output layer; the loss applies output_weight() (fused LM-head loss)
            return x.transpose(0, 1).contiguous()
        logits = F.linear(x.transpose(0, 1).contiguous(), self.output_weight())
        return gather_from_tp_region(logits, self.tp_group, -1) if gather_logits else logits

    def _recomputed(self, layer, x, cos, sin):
        """Full-layer activation recomputation that also replays the TP dropout generator's masks."""
        snapshot, calls = self.rng.states(), [0]

        def run(x_, cos_, sin_):
            calls[0] += 1
            if calls[0] == 1:
                return layer(x_, cos_, sin_)
            current = self.rng.states()
            self.rng.set_states(snapshot)
            try:
                return layer(x_, cos_, sin_)
            finally:
                self.rng.set_states(current)

        return checkpoint(run, x, cos, sin, use_reentrant=False)


def build_gpt_stage(config: ModelConfig, tp_group=None, pp_rank: int = 0, pp_size: int = 1, *, seed: int = 1234,
                    device=None) -> GPTModel:
    """The GPT stage of pipeline rank `pp_rank` of `pp_size`, initialised from `seed` (independent of tp/pp)."""
    model = GPTModel(config, tp_group, pre_process=pp_rank == 0, post_process=pp_rank == pp_size - 1,
                     layer_range=stage_layer_range(config, pp_rank, pp_size), seed=seed, device=device)
    model.init_weights(seed)
    return model


def allreduce_embedding_grads(model: GPTModel, embedding_group) -> None:
    """Sum the tied embedding's gradient over the first and last pipeline stage (no-op when untied or pp == 1).

    Call on every rank after backward, before the optimizer step (the data-parallel reduction may come before or
    after: both are sums). Uses `.main_grad` when a trainer keeps one, else `.grad`."""
    w = model.shared_embedding_weight()
    if w is None or group_size(embedding_group) == 1:
        return
    g = getattr(w, "main_grad", None)
    g = w.grad if g is None else g
    if g is None:
        g = w.grad = torch.zeros_like(w)
    dist.all_reduce(g, group=embedding_group)
