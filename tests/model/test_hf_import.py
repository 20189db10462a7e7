"""HF import mapping: config fields, refusals naming field and value, vocabulary padding rule, shards that merge back.
The end-to-end tool (checkpoint files, logits vs transformers at TP 1 and 2, training from it) is in
tests/tools/test_import_hf.py."""

import pytest
import torch

from megatron_tf.model.hf_export import merge_pp_state_dicts, merge_tp_state_dicts, to_llama_state_dict
from megatron_tf.model.hf_import import (
    HFImportError,
    from_llama_state_dict,
    full_config,
    model_config_from_llama,
    shard_state_dict,
    vocab_multiple,
)

HF = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 48,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
      "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 500000.0, "tie_word_embeddings": False,
      "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02}


def test_config_mapping():
    cfg = model_config_from_llama(HF, tp=1, vocab_size=125)
    assert (cfg.num_layers, cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_attention_heads) == (2, 32, 48, 4)
    assert cfg.group_query_attention and cfg.num_query_groups == 2 and cfg.kv_channels is None
    assert cfg.rotary_base == 500000.0 and cfg.norm_epsilon == 1e-6 and not cfg.tied_embeddings
    assert cfg.vocab_size == 125 and cfg.padded_vocab_size(1) == 128
    cfg5 = model_config_from_llama({**HF, "rope_theta": None, "num_key_value_heads": 4, "head_dim": 16,
                                    "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0},
                                    "tie_word_embeddings": True})  # transformers 5.x spelling, MHA, head_dim 16
    assert cfg5.rotary_base == 1000.0 and not cfg5.group_query_attention and cfg5.kv_channels == 16
    assert cfg5.tied_embeddings


@pytest.mark.parametrize("v_hf,v,tp,m", [(128, 125, 1, 128), (128, 125, 2, 64), (128, 128, 4, 32), (100, 97, 1, 4),
                                         (32000, 32000, 2, 128)])
def test_vocab_multiple_pads_to_exactly_the_hf_rows(v_hf, v, tp, m):
    assert vocab_multiple(v_hf, v, tp) == m
    assert -(-v // (m * tp)) * m * tp == v_hf  # Megatron's padding rule gives V_hf


def test_vocab_refusals():
    with pytest.raises(HFImportError, match="vocab_size = 101 cannot be split over tensor-parallel size 2"):
        vocab_multiple(101, 100, 2)
    with pytest.raises(HFImportError, match="tokenizer has 130 tokens but the model's embedding only 128 rows"):
        vocab_multiple(128, 130, 1)


@pytest.mark.parametrize("field,value,msg", [
    ("attention_bias", True, "attention_bias = True"),
    ("mlp_bias", True, "mlp_bias = True"),
    ("hidden_act", "gelu", "hidden_act = 'gelu'"),
    ("sliding_window", 4096, "sliding_window = 4096"),
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}, "rope_scaling.rope_type = 'llama3'"),
    ("rope_scaling", {"type": "linear", "factor": 2.0}, "rope_scaling.rope_type = 'linear'"),
    ("rope_parameters", {"rope_type": "yarn", "rope_theta": 1e4}, "rope_parameters.rope_type = 'yarn'"),
    ("rope_parameters", {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
     "partial_rotary_factor = 0.5"),
    ("model_type", "mistral", "model_type 'mistral'"),
])
def test_unrepresentable_configs_are_refused_naming_field_and_value(field, value, msg):
    with pytest.raises(HFImportError, match=msg.replace("(", r"\(").replace("[", r"\[")):
        model_config_from_llama({**HF, field: value})


def _hf_state_dict(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, d, f = cfg.hidden_size, cfg.head_dim, cfg.ffn_hidden_size
    nq, ng, v = cfg.num_attention_heads, cfg.num_kv_heads, 128
    sd = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        sd.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                   p + "self_attn.q_proj.weight": (nq * d, h), p + "self_attn.k_proj.weight": (ng * d, h),
                   p + "self_attn.v_proj.weight": (ng * d, h), p + "self_attn.o_proj.weight": (h, nq * d),
                   p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                   p + "mlp.down_proj.weight": (h, f)})
    return {k: torch.randn(s, generator=g) for k, s in sd.items()}


def test_state_dict_round_trip_and_shards_merge_back():
    cfg = model_config_from_llama(HF, tp=2, vocab_size=128)
    hf = _hf_state_dict(cfg)
    full = from_llama_state_dict(hf, cfg, tp=2)
    back = to_llama_state_dict(full, full_config(cfg, 2))
    assert set(back) == set(hf) and all(torch.equal(back[k], hf[k]) for k in hf)  # bit-equal
    stages = [merge_tp_state_dicts([shard_state_dict(full, cfg, 2, t, 2, p) for t in range(2)], full_config(cfg, 2))
              for p in range(2)]
    merged = merge_pp_state_dicts(stages)
    assert set(merged) == set(full) and all(torch.equal(merged[k], full[k]) for k in full)
    s10 = shard_state_dict(full, cfg, 2, 1, 2, 0)  # TP rank 1, first stage: layer 0 and the embedding only
    assert sorted({k.split(".")[0] for k in s10}) == ["decoder", "embedding"]
    assert s10["embedding.word_embeddings.weight"].shape == (64, 32)
    # QKV rows of rank 1: query heads 2-3 (rows 16..31 of Q), kv head 1 (rows 8..15 of K and of V)
    q, k, v = (hf["model.layers.0.self_attn." + n + "_proj.weight"] for n in "qkv")
    assert torch.equal(s10["decoder.layers.0.self_attention.linear_qkv.weight"],
                       torch.cat([q[16:32], k[8:16], v[8:16]]))


def test_bad_weights_are_refused_by_name():
    cfg = model_config_from_llama(HF, vocab_size=128)
    hf = _hf_state_dict(cfg)
    with pytest.raises(HFImportError, match=r"'model.layers.1.mlp.up_proj.weight' has shape \(48, 31\), expected"):
        from_llama_state_dict({**hf, "model.layers.1.mlp.up_proj.weight": torch.zeros(48, 31)}, cfg)
    with pytest.raises(HFImportError, match="no tensor 'lm_head.weight'"):
        from_llama_state_dict({k: t for k, t in hf.items() if k != "lm_head.weight"}, cfg)
    with pytest.raises(HFImportError, match="no place for: \\['model.layers.0.self_attn.q_proj.bias'\\]"):
        from_llama_state_dict({**hf, "model.layers.0.self_attn.q_proj.bias": torch.zeros(32)}, cfg)
    bad = dict(hf)
    bad["model.norm.weight"] = bad["model.norm.weight"].clone()
    bad["model.norm.weight"][3] = float("nan")
    with pytest.raises(ValueError, match="'model.norm.weight' holds 1 NaN and 0 infinite"):
        from_llama_state_dict(bad, cfg)
    tied = model_config_from_llama({**HF, "tie_word_embeddings": True}, vocab_size=128)
    with pytest.raises(HFImportError, match="lm_head.weight differs from model.embed_tokens.weight"):
        from_llama_state_dict(hf, tied)
