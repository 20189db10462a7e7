"""Hugging Face LlamaForCausalLM -> megatron_tf GPT (the inverse of hf_export.py), and the per-rank TP/PP shards.

    cfg = model_config_from_llama(hf_config_dict, tp=2, vocab_size=tokenizer.vocab_size)   # ModelConfig (per-TP)
    full = from_llama_state_dict(hf_state_dict, cfg, tp=2)                                 # TP=1 names and shapes
    shard = shard_state_dict(full, cfg, tp=2, tp_rank=1, pp=2, pp_rank=0)                  # what that rank loads

Representable: SiLU-gated MLP without biases, RMSNorm, RoPE with the default (unscaled) frequencies and any theta,
multi-head or grouped-query attention without biases, any head dimension (even), tied or untied embeddings. Refused,
naming the field and its value: another model_type / architecture, hidden_act != silu, attention_bias / mlp_bias,
rope scaling of any kind (linear, dynamic, yarn, llama3, ...), sliding windows, partial rotary embeddings.

Vocabulary: the HF embedding has config.vocab_size rows (V_hf >= the tokenizer's vocabulary V). The project pads V
to a multiple of make_vocab_size_divisible_by * tp; the import picks make_vocab_size_divisible_by (the first of 128,
64, ..., 1 that works) so that the padded size is exactly V_hf, so every HF row is kept and no row is added (the
softmax, and the loss, are the HF model's). That needs tp to divide V_hf; otherwise the import is refused.
Weights are converted to float32 (the trainer keeps fp32 parameters; bf16/fp16 -> fp32 is exact).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from megatron_tf.parallel.layers import shard_tensor

from .config import ModelConfig
from .hf_export import check_finite, partition_specs

VOCAB_MULTIPLES = (128, 64, 32, 16, 8, 4, 2, 1)


class HFImportError(ValueError):
    pass


def _rope_theta(hf: dict) -> float:
    """RoPE theta from transformers 4.x (`rope_theta`, `rope_scaling`) or 5.x (`rope_parameters`); refuses scaling."""
    theta = hf.get("rope_theta")
    for key in ("rope_scaling", "rope_parameters"):
        rp = hf.get(key)
        if rp is None:
            continue
        if not isinstance(rp, dict):
            raise HFImportError(f"config.json: {key} = {rp!r}: expected an object or null")
        kind = rp.get("rope_type", rp.get("type", "default"))
        if kind != "default":
            raise HFImportError(f"config.json: {key}.rope_type = {kind!r}: the project's RoPE has no scaling "
                                "(only 'default' frequencies base^(-2i/d) can be represented)")
        extra = sorted(set(rp) - {"rope_type", "type", "rope_theta", "partial_rotary_factor"})
        if extra:
            raise HFImportError(f"config.json: {key} has fields {extra} that the project's RoPE cannot represent")
        if rp.get("partial_rotary_factor", 1.0) != 1.0:
            raise HFImportError(f"config.json: {key}.partial_rotary_factor = {rp['partial_rotary_factor']!r}: "
                                "only full rotary embeddings (1.0) can be represented")
        if rp.get("rope_theta") is not None:
            if theta is not None and float(theta) != float(rp["rope_theta"]):
                raise HFImportError(f"config.json: rope_theta {theta} and {key}.rope_theta {rp['rope_theta']} differ")
            theta = rp["rope_theta"]
    return float(10000.0 if theta is None else theta)


def check_llama_config(hf: dict) -> None:
    """Refuse what megatron_tf's GPT cannot represent, naming the config.json field and its value."""
    archs = hf.get("architectures") or ["LlamaForCausalLM"]
    if hf.get("model_type") != "llama" or archs != ["LlamaForCausalLM"]:
        raise HFImportError(f"config.json: model_type {hf.get('model_type')!r}, architectures {archs!r}: only "
                            "'llama' / ['LlamaForCausalLM'] can be imported")
    checks = (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False), ("sliding_window", None),
              ("use_sliding_window", False), ("partial_rotary_factor", 1.0), ("pretraining_tp", 1))
    for key, want in checks:
        if key in hf and hf[key] != want:
            raise HFImportError(f"config.json: {key} = {hf[key]!r}: megatron_tf's GPT needs {want!r}")
    _rope_theta(hf)


def vocab_multiple(hf_vocab: int, vocab_size: int, tp: int) -> int:
    """make_vocab_size_divisible_by m with ceil(vocab_size / (m tp)) * m tp == hf_vocab (module doc)."""
    if vocab_size > hf_vocab:
        raise HFImportError(f"the tokenizer has {vocab_size} tokens but the model's embedding only {hf_vocab} rows "
                            "(config.json vocab_size)")
    for m in VOCAB_MULTIPLES:
        if -(-vocab_size // (m * tp)) * m * tp == hf_vocab:
            return m
    raise HFImportError(f"config.json: vocab_size = {hf_vocab} cannot be split over tensor-parallel size {tp} "
                        f"(it must be a multiple of {tp}); import at a tensor-parallel size that divides it")


def model_config_from_llama(hf: dict, tp: int = 1, vocab_size: int | None = None) -> ModelConfig:
    """The per-TP ModelConfig (the trainer's flags) of a LlamaForCausalLM config.json dict."""
    check_llama_config(hf)
    h, nq = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    ng = int(hf.get("num_key_value_heads") or nq)
    head_dim = hf.get("head_dim") or h // nq
    hf_vocab = int(hf["vocab_size"])
    vocab = int(vocab_size or hf_vocab)
    try:
        cfg = ModelConfig(
            num_layers=int(hf["num_hidden_layers"]), hidden_size=h, ffn_hidden_size=int(hf["intermediate_size"]),
            num_attention_heads=nq, group_query_attention=ng != nq, num_query_groups=ng if ng != nq else None,
            kv_channels=int(head_dim) if int(head_dim) * nq != h else None,
            max_position_embeddings=int(hf.get("max_position_embeddings") or 2048), vocab_size=vocab,
            make_vocab_size_divisible_by=vocab_multiple(hf_vocab, vocab, tp),
            untie_embeddings_and_output_weights=not hf.get("tie_word_embeddings", False),
            activation="swiglu", normalization="RMSNorm", norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
            rotary_base=_rope_theta(hf), init_method_std=float(hf.get("initializer_range", 0.02)),
            attention_dropout=float(hf.get("attention_dropout", 0.0)))
    except (KeyError, TypeError, ValueError) as e:
        raise HFImportError(f"config.json: cannot build the model config ({type(e).__name__}: {e})") from e
    cfg.check_tensor_parallel(tp)
    return cfg


def full_config(cfg: ModelConfig, tp: int) -> ModelConfig:
    """The TP=1 config of the same model (its padded vocabulary kept: make_vocab_size_divisible_by * tp)."""
    return dataclasses.replace(cfg, make_vocab_size_divisible_by=cfg.make_vocab_size_divisible_by * tp)


def from_llama_state_dict(hf_sd: Mapping[str, torch.Tensor], cfg: ModelConfig, tp: int = 1) -> dict[str, torch.Tensor]:
    """Full (TP=1) megatron_tf state dict, fp32, from LlamaForCausalLM tensors. Missing, unexpected or misshapen
    tensors are refused by name."""
    sd = {k: v for k, v in hf_sd.items() if not k.endswith("rotary_emb.inv_freq")}
    check_finite(sd)
    nq, ng, d, f, h = cfg.num_attention_heads, cfg.num_kv_heads, cfg.head_dim, cfg.ffn_hidden_size, cfg.hidden_size
    v_pad = full_config(cfg, tp).padded_vocab_size(1)
    used: set[str] = set()

    def get(name, shape):
        if name not in sd:
            raise HFImportError(f"the Hugging Face weights have no tensor {name!r}")
        t = sd[name]
        if tuple(t.shape) != tuple(shape):
            raise HFImportError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        used.add(name)
        return t.to(torch.float32)

    out = {"embedding.word_embeddings.weight": get("model.embed_tokens.weight", (v_pad, h))}
    for i in range(cfg.num_layers):
        s, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        out[dst + "input_layernorm.weight"] = get(s + "input_layernorm.weight", (h,))
        out[dst + "self_attention.linear_qkv.weight"] = torch.cat([
            get(s + "self_attn.q_proj.weight", (nq * d, h)), get(s + "self_attn.k_proj.weight", (ng * d, h)),
            get(s + "self_attn.v_proj.weight", (ng * d, h))])
        out[dst + "self_attention.linear_proj.weight"] = get(s + "self_attn.o_proj.weight", (h, nq * d))
        out[dst + "pre_mlp_layernorm.weight"] = get(s + "post_attention_layernorm.weight", (h,))
        out[dst + "mlp.linear_fc1.weight"] = torch.cat([get(s + "mlp.gate_proj.weight", (f, h)),
                                                        get(s + "mlp.up_proj.weight", (f, h))])
        out[dst + "mlp.linear_fc2.weight"] = get(s + "mlp.down_proj.weight", (h, f))
    out["decoder.final_layernorm.weight"] = get("model.norm.weight", (h,))
    if not cfg.tied_embeddings:
        out["output_layer.weight"] = get("lm_head.weight", (v_pad, h))
    elif "lm_head.weight" in sd:
        if not torch.equal(sd["lm_head.weight"].to(torch.float32), out["embedding.word_embeddings.weight"]):
            raise HFImportError("tie_word_embeddings is true but lm_head.weight differs from "
                                "model.embed_tokens.weight")
        used.add("lm_head.weight")
    unexpected = sorted(set(sd) - used)
    if unexpected:
        raise HFImportError(f"the Hugging Face weights hold tensors the model has no place for: {unexpected[:5]}"
                            f"{' ...' if len(unexpected) > 5 else ''}")
    return {k: v.contiguous() for k, v in out.items()}


def grow_vocab_rows(hf_sd: Mapping[str, torch.Tensor], hf: dict, vocab_size: int, tp: int = 1
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """Rows for tokens added to the tokenizer (the reserved tokens an outside tokenizer lacks) when the embedding has
    fewer rows than the tokenizer has tokens: the embedding (and an untied lm_head) get rows up to ceil(V / tp) * tp,
    each the mean of the existing rows (so a new token starts as an average token: its logit is the mean logit), and
    config vocab_size follows. Unchanged (same objects) when the rows suffice."""
    rows = int(hf["vocab_size"])
    if vocab_size <= rows:
        return dict(hf_sd), dict(hf)
    target = -(-vocab_size // tp) * tp
    out = dict(hf_sd)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in out:
            w = out[name]
            if w.shape[0] != rows:
                raise HFImportError(f"tensor {name!r} has {w.shape[0]} rows, config.json vocab_size is {rows}")
            mean = w[:rows].double().mean(0, keepdim=True).to(w.dtype)
            out[name] = torch.cat([w, mean.expand(target - rows, -1)])
    return out, {**hf, "vocab_size": target}


def stage_parameter_names(cfg: ModelConfig, pp: int, pp_rank: int) -> list[str]:
    """Parameter names held by pipeline stage `pp_rank` of `pp` (built on the meta device)."""
    from .gpt import GPTModel, stage_layer_range

    with torch.device("meta"):
        stage = GPTModel(cfg, None, pre_process=pp_rank == 0, post_process=pp_rank == pp - 1,
                         layer_range=stage_layer_range(cfg, pp_rank, pp))
    return [name for name, _ in stage.named_parameters()]


def shard_state_dict(full: Mapping[str, torch.Tensor], cfg: ModelConfig, tp: int, tp_rank: int, pp: int = 1,
                     pp_rank: int = 0) -> dict[str, torch.Tensor]:
    """The state dict that TP rank `tp_rank` of pipeline stage `pp_rank` holds (what the trainer saves there)."""
    fcfg = full_config(cfg, tp)
    specs = partition_specs(fcfg)
    out = {}
    for name in stage_parameter_names(fcfg, pp, pp_rank):
        spec = specs[name]
        t = full[name]
        out[name] = t.clone() if spec is None else shard_tensor(t, spec[0], spec[1], tp, tp_rank).contiguous()
    return out
