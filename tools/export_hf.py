#!/usr/bin/env python3
"""Export a megatron_tf GPT (SwiGLU + RMSNorm + RoPE) to a Hugging Face LlamaForCausalLM directory.

    python tools/export_hf.py --model-config model_config.json --state-dict rank0.safetensors rank1.safetensors \
        --tensor-model-parallel-size 2 --output exports/llama [--dtype bfloat16] [--keep-padded-vocab]

    python tools/export_hf.py --load runs/x [--ckpt-step 2000] --output exports/llama

--load reads a trainer checkpoint directory (its `latest`, or --ckpt-step N, or an iter_* directory): config and
per-rank shards come from there (docs/training.md), and so does the tokenizer (--tokenizer-type / --tokenizer-model
override it, e.g. when its file moved). Otherwise --model-config is the ModelConfig as JSON
(ModelConfig.to_dict(); vocab_size set). --state-dict lists one file per rank (.safetensors, or a torch file read
with weights_only=True), pipeline stage by stage and TP ranks in order within a stage; give the tokenizer flags for
a self-contained export. The output directory (config.json, generation_config.json, model.safetensors,
megatron_tf_config.json, and the tokenizer: tokenizer.json, tokenizer_config.json, special_tokens_map.json, for
SentencePiece also tokenizer.model) is written atomically; a non-empty --output is replaced only with --overwrite and
only when it holds an earlier export. Non-finite weights are refused, naming the tensor. Logic:
megatron_tf/model/hf_export.py (format and mapping: docs/model.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args, opt  # noqa: E402
from megatron_tf.model.hf_export import export_llama, load_model_config, merge_state_dict_files  # noqa: E402
from megatron_tf.tokenizer.config import TokenizerOverride  # noqa: E402
from megatron_tf.tokenizer.tokenizer import TokenizerError, build_tokenizer  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ExportConfig:
    """What to export (a checkpoint, or a model config and per-rank state dicts) and how."""

    output: str = field(metadata=opt("Output directory."))
    load: str | None = field(default=None, metadata=opt(
        "Trainer checkpoint directory (instead of --model-config/--state-dict)."))
    ckpt_step: int | None = field(default=None, metadata=opt("With --load: this iteration instead of latest."))
    model_config: str | None = field(default=None, metadata=opt("ModelConfig JSON."))
    state_dict: list[str] | None = field(default=None, metadata=opt("Per-rank state dict files (stage-major)."))
    tensor_model_parallel_size: int = field(default=1, metadata=opt("TP size of the --state-dict files."))
    pipeline_model_parallel_size: int = field(default=1, metadata=opt("PP size of the --state-dict files."))
    dtype: str = field(default="float32", metadata=opt("Weights' dtype in the export.", choices=sorted(DTYPES)))
    keep_padded_vocab: bool = field(default=False, metadata=opt(
        "Keep the padding rows of the vocabulary (default: slice to the true vocab_size)."))
    max_position_embeddings: int | None = field(default=None, metadata=opt(
        "Default: the model config's max_position_embeddings."))
    bos_token_id: int | None = field(default=None, metadata=opt("BOS id in the HF config."))
    eos_token_id: int | None = field(default=None, metadata=opt("EOS id in the HF config (e.g. the tokenizer's eod)."))
    pad_token_id: int | None = field(default=None, metadata=opt("PAD id in the HF config."))
    write_tokenizer: bool = field(default=True, metadata=opt(
        "Write the tokenizer files (--no-tokenizer: the weights only, not self-contained).", flag="--tokenizer"))
    overwrite: bool = field(default=False, metadata=opt("Replace an earlier export in --output."))


def parse_args(argv=None) -> tuple[ExportConfig, TokenizerOverride]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataclass_args(p, ExportConfig, "export")
    add_dataclass_args(p, TokenizerOverride, "tokenizer (default with --load: the checkpoint's)")
    ns = p.parse_args(argv)
    return dataclass_from_args(ExportConfig, ns), dataclass_from_args(TokenizerOverride, ns)


def export_tokenizer(cfg: ExportConfig, tok: TokenizerOverride, ckpt_config: dict | None):
    """The tokenizer to write into the export, or None (--no-tokenizer, or no flags and no checkpoint)."""
    if not cfg.write_tokenizer:
        return None
    if tok.tokenizer_type:
        return tok.build()
    if ckpt_config is None:
        print("export_hf: no --tokenizer-type/--tokenizer-model given: the export has no tokenizer files",
              file=sys.stderr)
        return None
    tc = ckpt_config["configs"]["tokenizer"]
    try:
        return build_tokenizer(tc["tokenizer_type"], tc.get("tokenizer_model"), tc.get("vocab_size"))
    except TokenizerError as e:
        raise SystemExit(f"export_hf: cannot rebuild the checkpoint's tokenizer ({e}); pass --tokenizer-type and "
                         "--tokenizer-model, or --no-tokenizer") from e


def main(argv=None) -> int:
    args, tok = parse_args(argv)
    if args.load:
        from megatron_tf.checkpoint import CheckpointError, merged_state_dict, resolve_checkpoint_dir

        ckpt_dir = resolve_checkpoint_dir(args.load, args.ckpt_step)
        if ckpt_dir is None:
            raise CheckpointError(f"--load {args.load}: no checkpoint there")
        sd, config, ckpt_config = merged_state_dict(ckpt_dir)
        tokenizer = export_tokenizer(args, tok, ckpt_config)
    elif args.model_config and args.state_dict:
        config = load_model_config(args.model_config)
        sd = merge_state_dict_files(args.state_dict, config, args.tensor_model_parallel_size,
                                    args.pipeline_model_parallel_size)
        tokenizer = export_tokenizer(args, tok, None)
    else:
        raise SystemExit("export_hf: give --load CHECKPOINT_DIR, or --model-config and --state-dict")
    out = export_llama(sd, config, args.output, dtype=DTYPES[args.dtype], keep_padded_vocab=args.keep_padded_vocab,
                       overwrite=args.overwrite, max_position_embeddings=args.max_position_embeddings,
                       bos_token_id=args.bos_token_id, eos_token_id=args.eos_token_id,
                       pad_token_id=args.pad_token_id, tokenizer=tokenizer)
    print(f"exported LlamaForCausalLM to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
