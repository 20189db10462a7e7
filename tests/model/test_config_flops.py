"""ModelConfig (flags, Megatron's defaults and vocab padding) and the parameter / FLOP formulas."""

import argparse
import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args
from megatron_tf.model import ModelConfig, build_gpt_stage, model_flops_per_token, num_parameters


def test_cli_flags_use_megatron_names():
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, ModelConfig)
    ns = parser.parse_args("--num-layers 3 --hidden-size 64 --num-attention-heads 8 --group-query-attention "
                           "--num-query-groups 2 --no-untie-embeddings-and-output-weights --activation relu2 "
                           "--normalization RMSNorm --norm-epsilon 1e-6 --rotary-base 500000 --init-method-std 0.01 "
                           "--make-vocab-size-divisible-by 64 --sequence-parallel --hidden-dropout 0.1 "
                           "--max-position-embeddings 256".split())
    cfg = dataclass_from_args(ModelConfig, ns, vocab_size=1000)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_kv_heads, cfg.tied_embeddings, cfg.activation) == \
        (3, 64, 2, True, "relu2")
    assert (cfg.norm_epsilon, cfg.rotary_base, cfg.sequence_parallel, cfg.ffn_hidden_size) == \
        (1e-6, 500000.0, True, 256)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(SystemExit):
        parser.parse_args(["--activation", "gelu"])
    # defaults: the Llama architecture
    d = dataclass_from_args(ModelConfig, parser.parse_args([]))
    assert (d.activation, d.normalization, d.tied_embeddings, d.hidden_dropout, d.num_kv_heads) == \
        ("swiglu", "RMSNorm", False, 0.0, 12)


def test_megatron_size_rules():
    # ffn: 4h, or int(8h/3 / 64) * 64 with swiglu (Megatron-LM arguments.py)
    assert ModelConfig(hidden_size=768).ffn_hidden_size == 2048
    assert ModelConfig(hidden_size=4096, num_attention_heads=32).ffn_hidden_size == 10880
    assert ModelConfig(hidden_size=768, activation="relu2").ffn_hidden_size == 3072
    # vocab padding: GPT-2's 50257 -> 50304 (multiple of 128), 50432 with TP 2 (multiple of 256)
    cfg = ModelConfig(vocab_size=50257)
    assert (cfg.padded_vocab_size(1), cfg.padded_vocab_size(2), cfg.padded_vocab_size(8)) == (50304, 50432, 51200)
    with pytest.raises(ValueError, match="not divisible by the tensor-parallel size 4: num_attention_heads 6"):
        ModelConfig(hidden_size=48, num_attention_heads=6).check_tensor_parallel(4)
    with pytest.raises(ValueError, match="set ffn_hidden_size"):
        ModelConfig(hidden_size=16, num_attention_heads=2)


@pytest.mark.parametrize("kw", [{}, {"untie_embeddings_and_output_weights": False},
                                {"group_query_attention": True, "num_query_groups": 2, "activation": "relu2"}])
def test_num_parameters_counts_the_model(kw):
    cfg = ModelConfig(num_layers=3, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48, vocab_size=100,
                      make_vocab_size_divisible_by=16, **kw)
    model = build_gpt_stage(cfg)
    assert num_parameters(cfg) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kw", [{}, {"group_query_attention": True, "num_query_groups": 2, "activation": "relu2"}])
def test_flops_match_torch_flop_counter(kw):
    cfg = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48, vocab_size=100,
                      make_vocab_size_divisible_by=16, **kw)
    model = build_gpt_stage(cfg)
    b, s = 2, 16
    ids = torch.randint(0, 100, (b, s))
    # torch's counter sees every matmul except the fused attention kernel: add the attention term 4 s nq d per
    # layer and token (QK^T and AV) by hand
    attn_fwd = 4 * s * cfg.num_attention_heads * cfg.head_dim * cfg.num_layers * b * s
    with FlopCounterMode(display=False) as fwd:
        logits = model(ids)
    assert fwd.get_total_flops() + attn_fwd == model_flops_per_token(cfg, s, training=False) * b * s
    with FlopCounterMode(display=False) as both:
        model(ids).sum().backward()
    assert both.get_total_flops() + 3 * attn_fwd == model_flops_per_token(cfg, s) * b * s
    assert logits.shape[-1] == 112


def test_flops_equal_narayanan_formula():
    # Narayanan et al. 2021: 72 B s l h^2 (1 + s/(6h) + V/(12 l h)) per iteration without recomputation, for a
    # standard GPT (MHA, 4h two-matrix MLP): relu2 with ffn 4h is exactly that shape
    for layers, h, heads, s, v in [(24, 1024, 16, 2048, 51200), (2, 64, 4, 128, 256)]:
        cfg = ModelConfig(num_layers=layers, hidden_size=h, num_attention_heads=heads, activation="relu2",
                          vocab_size=v)
        expected = 72 * layers * h * h * (1 + s / (6 * h) + v / (12 * layers * h))
        assert model_flops_per_token(cfg, s) == pytest.approx(expected, rel=1e-12)
    cfg = dataclasses.replace(cfg)
    half = model_flops_per_token(cfg, s, causal_attention=True)
    assert model_flops_per_token(cfg, s) - half == pytest.approx(3 * 2 * s * h * layers)
