"""Merge tensor/pipeline-parallel state dicts and export the GPT to Hugging Face LlamaForCausalLM.

Merging (`merge_tp_state_dicts`): the partition layout of every parameter is read from a TP=1 model built on the
meta device (the layers' `partition_dim` / `partition_chunks` metadata, megatron_tf/parallel/layers.py), so QKV
(blocks Q, K, V) and the SwiGLU fc1 (blocks gate, up) are reassembled block by block; replicated tensors (norms)
must be equal on every rank (checked). `merge_pp_state_dicts` unions the stages' dicts (names are global; the tied
embedding held by the first and last stage must be equal).

Export (`export_llama`): SwiGLU + RMSNorm + RoPE (tied or untied) is exactly Llama:

    embedding.word_embeddings.weight              -> model.embed_tokens.weight          (rows [:vocab_size])
    decoder.layers.i.input_layernorm.weight       -> model.layers.i.input_layernorm.weight
    decoder.layers.i.self_attention.linear_qkv    -> model.layers.i.self_attn.{q,k,v}_proj.weight  (split Q|K|V)
    decoder.layers.i.self_attention.linear_proj   -> model.layers.i.self_attn.o_proj.weight
    decoder.layers.i.pre_mlp_layernorm.weight     -> model.layers.i.post_attention_layernorm.weight
    decoder.layers.i.mlp.linear_fc1.weight        -> model.layers.i.mlp.{gate,up}_proj.weight      (split gate|up)
    decoder.layers.i.mlp.linear_fc2.weight        -> model.layers.i.mlp.down_proj.weight
    decoder.final_layernorm.weight                -> model.norm.weight
    output_layer.weight                           -> lm_head.weight (untied; tied: tie_word_embeddings=true)

RoPE: both use rotate-half pairs (i, i + d/2) with theta_i = base^(-2i/d), so q/k weights copy without permutation.
Vocabulary: the padded rows are dropped (HF logits = ours[..., :vocab_size]) unless keep_padded_vocab=True (then the
softmax normalisation, and so the loss, equals ours exactly; the extra ids are never produced by the tokenizer).
ReLU^2 or LayerNorm models are not Llama and are refused.
With the run's tokenizer the export is self-contained: tokenizer files (megatron_tf/tokenizer/hf_files.py),
bos/eos/pad ids in config.json and generation_config.json. Non-finite weights are refused, naming the tensor.
The directory is written atomically: files go to a temporary sibling directory that is renamed into place; an
existing non-empty directory is replaced only with overwrite=True and only if it is an earlier export.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import torch

from megatron_tf.parallel.layers import merge_shards
from megatron_tf.utils.io import atomic_directory

from .config import ModelConfig

HF_WEIGHTS_NAME = "model.safetensors"


def partition_specs(config: ModelConfig) -> dict[str, tuple[int, tuple[int, ...]] | None]:
    """name -> (partition_dim, blocks) for tensor-parallel parameters, None for replicated ones (full model)."""
    from .gpt import GPTModel

    with torch.device("meta"):
        model = GPTModel(config, None)
    specs = {}
    for name, p in model.named_parameters():
        if getattr(p, "tensor_model_parallel", False):
            # a single block is written as () (= the whole dim): its length depends on the TP size (vocab padding)
            specs[name] = (p.partition_dim, p.partition_chunks if len(p.partition_chunks) > 1 else ())
        else:
            specs[name] = None
    return specs


def merge_tp_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]], config: ModelConfig,
                         replicated_atol: float = 0.0) -> dict[str, torch.Tensor]:
    """Merge the state dicts of TP ranks 0..tp-1 (of one pipeline stage, or of the whole model) into TP=1 tensors.

    Replicated tensors must agree across ranks within `replicated_atol` (0: bitwise), else ValueError."""
    if not state_dicts:
        raise ValueError("merge_tp_state_dicts: no state dicts")
    specs = partition_specs(config)
    names = list(state_dicts[0].keys())
    for r, sd in enumerate(state_dicts[1:], start=1):
        if set(sd.keys()) != set(names):
            diff = sorted(set(sd.keys()) ^ set(names))
            raise ValueError(f"merge_tp_state_dicts: TP rank {r} has different tensor names than rank 0: {diff[:5]}")
    out = {}
    for name in names:
        if name not in specs:
            raise ValueError(f"merge_tp_state_dicts: unknown tensor {name!r} for this model config")
        tensors = [sd[name] for sd in state_dicts]
        spec = specs[name]
        if spec is None:
            for r, t in enumerate(tensors[1:], start=1):
                if t.shape != tensors[0].shape or not torch.allclose(t, tensors[0], rtol=0.0, atol=replicated_atol):
                    raise ValueError(f"merge_tp_state_dicts: replicated tensor {name!r} differs between TP rank 0 "
                                     f"and rank {r} (max abs diff {(t - tensors[0]).abs().max().item():.3g})")
            out[name] = tensors[0].clone()
        else:
            out[name] = merge_shards(tensors, *spec)
    return out


def merge_pp_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Union of the pipeline stages' (TP-merged) state dicts; a name on several stages must hold equal tensors."""
    out: dict[str, torch.Tensor] = {}
    for stage, sd in enumerate(state_dicts):
        for name, t in sd.items():
            if name in out and not torch.equal(out[name], t):
                raise ValueError(f"merge_pp_state_dicts: {name!r} differs between pipeline stages (stage {stage})")
            out.setdefault(name, t)
    return out


def check_llama_compatible(config: ModelConfig) -> None:
    if config.activation != "swiglu":
        raise ValueError(f"cannot export to LlamaForCausalLM: activation {config.activation!r} (Llama uses SwiGLU); "
                         "ReLU^2 models have no Hugging Face Llama equivalent")
    if config.normalization != "RMSNorm":
        raise ValueError(f"cannot export to LlamaForCausalLM: normalization {config.normalization!r} "
                         "(Llama uses RMSNorm)")


def llama_config_dict(config: ModelConfig, vocab_size: int, dtype: torch.dtype = torch.float32,
                      max_position_embeddings: int | None = None, bos_token_id: int | None = None,
                      eos_token_id: int | None = None, pad_token_id: int | None = None) -> dict:
    mpe = max_position_embeddings or config.max_position_embeddings
    if mpe is None:
        raise ValueError("llama_config_dict: max_position_embeddings is not set in the model config; pass it")
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.ffn_hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": mpe,
        "rms_norm_eps": config.norm_epsilon,
        "rope_theta": config.rotary_base,  # transformers 4.x
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rotary_base},  # transformers 5.x
        "tie_word_embeddings": config.tied_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": config.init_method_std,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "use_cache": True,
        "torch_dtype": dtype_name,  # transformers 4.x
        "dtype": dtype_name,  # transformers 5.x
    }


def to_llama_state_dict(state_dict: Mapping[str, torch.Tensor], config: ModelConfig,
                        keep_padded_vocab: bool = False) -> dict[str, torch.Tensor]:
    """Rename/split a full (TP-merged, all stages) state dict into LlamaForCausalLM names."""
    check_llama_compatible(config)
    if config.vocab_size is None:
        raise ValueError("to_llama_state_dict: config.vocab_size is not set")
    nq, ng, d = config.num_attention_heads, config.num_kv_heads, config.head_dim
    f = config.ffn_hidden_size

    def get(name):
        if name not in state_dict:
            raise KeyError(f"to_llama_state_dict: the state dict has no {name!r} (merge all TP ranks and pipeline "
                           "stages first)")
        return state_dict[name]

    def vocab_rows(t):
        return t if keep_padded_vocab else t[:config.vocab_size]

    out = {"model.embed_tokens.weight": vocab_rows(get("embedding.word_embeddings.weight"))}
    for i in range(config.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        q, k, v = get(src + "self_attention.linear_qkv.weight").split((nq * d, ng * d, ng * d), dim=0)
        gate, up = get(src + "mlp.linear_fc1.weight").split((f, f), dim=0)
        out.update({
            dst + "input_layernorm.weight": get(src + "input_layernorm.weight"),
            dst + "self_attn.q_proj.weight": q,
            dst + "self_attn.k_proj.weight": k,
            dst + "self_attn.v_proj.weight": v,
            dst + "self_attn.o_proj.weight": get(src + "self_attention.linear_proj.weight"),
            dst + "post_attention_layernorm.weight": get(src + "pre_mlp_layernorm.weight"),
            dst + "mlp.gate_proj.weight": gate,
            dst + "mlp.up_proj.weight": up,
            dst + "mlp.down_proj.weight": get(src + "mlp.linear_fc2.weight"),
        })
    out["model.norm.weight"] = get("decoder.final_layernorm.weight")
    if not config.tied_embeddings:
        out["lm_head.weight"] = vocab_rows(get("output_layer.weight"))
    return out


def check_finite(tensors: Mapping[str, torch.Tensor], what: str = "") -> None:
    """ValueError naming the first tensor holding a NaN or an infinity (and how many it holds)."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise ValueError(f"refusing to export: tensor {name!r}{what} holds {n_nan} NaN and {n_inf} infinite "
                             f"values (of {t.numel()}); a diverged or corrupted checkpoint?")


def check_output_dir(out_dir: str, overwrite: bool) -> None:
    """An export goes into a missing or empty directory; over an existing export only with overwrite (a flat
    directory holding config.json: never a checkpoint or any other directory with subdirectories)."""
    if not os.path.exists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise FileExistsError(f"export output {out_dir} exists and is not a directory")
    entries = os.listdir(out_dir)
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(f"export output {out_dir} exists and is not empty ({len(entries)} entries); pass "
                              "--overwrite (overwrite=True) to replace an earlier export")
    subdirs = [e for e in entries if os.path.isdir(os.path.join(out_dir, e))]
    if "config.json" not in entries or subdirs:
        raise FileExistsError(f"export output {out_dir} is not an earlier Hugging Face export (expected a flat "
                              f"directory with config.json; found subdirectories {subdirs[:3]} or no config.json): "
                              "refusing to replace it even with --overwrite")


def generation_config_dict(bos_token_id: int | None, eos_token_id: int | None, pad_token_id: int | None) -> dict:
    return {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def export_llama(state_dict: Mapping[str, torch.Tensor], config: ModelConfig, out_dir: str, *,
                 dtype: torch.dtype = torch.float32, keep_padded_vocab: bool = False, overwrite: bool = False,
                 max_position_embeddings: int | None = None, bos_token_id: int | None = None,
                 eos_token_id: int | None = None, pad_token_id: int | None = None, tokenizer=None) -> str:
    """Write `out_dir` atomically: config.json, generation_config.json, model.safetensors, megatron_tf_config.json
    and, given the run's `tokenizer` (megatron_tf.tokenizer.Tokenizer), its files (megatron_tf/tokenizer/hf_files.py);
    the special token ids default to the tokenizer's (bos = eos = <|endoftext|>, pad = <|pad|>). Non-finite weights
    (in the source or after the cast to `dtype`) are refused naming the tensor. Returns out_dir."""
    from safetensors.torch import save_file

    from megatron_tf.tokenizer.hf_files import special_token_ids, write_hf_tokenizer_files

    check_finite(state_dict)
    if tokenizer is not None and tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"export_llama: the tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens but the "
                         f"model config's vocab_size is {config.vocab_size}: not the run's tokenizer")
    hf = to_llama_state_dict(state_dict, config, keep_padded_vocab)
    ids = special_token_ids(tokenizer) if tokenizer is not None else {}
    bos_token_id = ids.get("bos_token_id") if bos_token_id is None else bos_token_id
    eos_token_id = ids.get("eos_token_id") if eos_token_id is None else eos_token_id
    pad_token_id = ids.get("pad_token_id") if pad_token_id is None else pad_token_id
    vocab = hf["model.embed_tokens.weight"].shape[0]
    hf_config = llama_config_dict(config, vocab, dtype, max_position_embeddings, bos_token_id, eos_token_id,
                                  pad_token_id)
    out_dir = os.path.abspath(out_dir)
    check_output_dir(out_dir, overwrite)
    tensors = {k: v.detach().to("cpu", dtype).contiguous().clone() for k, v in hf.items()}
    check_finite(tensors, f" (after the cast to {str(dtype).removeprefix('torch.')})")
    with atomic_directory(out_dir) as tmp:
        save_file(tensors, os.path.join(tmp, HF_WEIGHTS_NAME), metadata={"format": "pt"})
        _write_json(os.path.join(tmp, "config.json"), hf_config)
        _write_json(os.path.join(tmp, "generation_config.json"),
                    generation_config_dict(bos_token_id, eos_token_id, pad_token_id))
        _write_json(os.path.join(tmp, "megatron_tf_config.json"), config.to_dict())
        if tokenizer is not None:
            write_hf_tokenizer_files(tokenizer, tmp, hf_config["max_position_embeddings"])
    return out_dir


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a torch file loaded with weights_only=True (never unpickles code)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"state dict file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a flat dict of tensors (a model state_dict)")
    return sd


def load_model_config(path: str) -> ModelConfig:
    with open(path, encoding="utf-8") as fh:
        d = json.load(fh)
    try:
        return ModelConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a megatron_tf ModelConfig: {e}") from e


def merge_state_dict_files(paths: Sequence[str], config: ModelConfig, tp_size: int = 1,
                           pp_size: int = 1) -> dict[str, torch.Tensor]:
    """Full state dict from per-rank files ordered pipeline stage by stage, TP ranks within a stage."""
    if len(paths) != tp_size * pp_size:
        raise ValueError(f"expected {tp_size * pp_size} state dict files (tp {tp_size} x pp {pp_size}), "
                         f"got {len(paths)}")
    stages = []
    for p in range(pp_size):
        shards = [load_state_dict_file(f) for f in paths[p * tp_size:(p + 1) * tp_size]]
        stages.append(merge_tp_state_dicts(shards, config) if tp_size > 1 else shards[0])
    return merge_pp_state_dicts(stages)
