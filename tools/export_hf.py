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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megatron_tf.model.hf_export import export_llama, load_model_config, merge_state_dict_files  # noqa: E402
from megatron_tf.tokenizer.tokenizer import TOKENIZER_TYPES, TokenizerError, build_tokenizer  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--load", help="trainer checkpoint directory (instead of --model-config/--state-dict)")
    p.add_argument("--ckpt-step", type=int, default=None, help="with --load: this iteration instead of latest")
    p.add_argument("--model-config", help="ModelConfig JSON")
    p.add_argument("--state-dict", nargs="+", help="per-rank state dict files (stage-major)")
    p.add_argument("--tensor-model-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--keep-padded-vocab", action="store_true",
                   help="keep the padding rows of the vocabulary (default: slice to the true vocab_size)")
    p.add_argument("--max-position-embeddings", type=int, default=None,
                   help="default: the model config's max_position_embeddings")
    p.add_argument("--bos-token-id", type=int, default=None)
    p.add_argument("--eos-token-id", type=int, default=None, help="e.g. the tokenizer's eod id")
    p.add_argument("--pad-token-id", type=int, default=None)
    p.add_argument("--tokenizer-type", default=None, choices=TOKENIZER_TYPES,
                   help="the run's tokenizer (default with --load: the checkpoint's)")
    p.add_argument("--tokenizer-model", default=None, help="its file (SentencePiece .model or HF tokenizer.json)")
    p.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer only")
    p.add_argument("--no-tokenizer", action="store_true", help="write the weights only (not self-contained)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output")
    return p.parse_args(argv)


def export_tokenizer(args, ckpt_config: dict | None):
    """The tokenizer to write into the export, or None (--no-tokenizer, or no flags and no checkpoint)."""
    if args.no_tokenizer:
        return None
    if args.tokenizer_type:
        return build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_size)
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
    args = parse_args(argv)
    if args.load:
        from megatron_tf.checkpoint import CheckpointError, merged_state_dict, resolve_checkpoint_dir

        ckpt_dir = resolve_checkpoint_dir(args.load, args.ckpt_step)
        if ckpt_dir is None:
            raise CheckpointError(f"--load {args.load}: no checkpoint there")
        sd, config, ckpt_config = merged_state_dict(ckpt_dir)
        tokenizer = export_tokenizer(args, ckpt_config)
    elif args.model_config and args.state_dict:
        config = load_model_config(args.model_config)
        sd = merge_state_dict_files(args.state_dict, config, args.tensor_model_parallel_size,
                                    args.pipeline_model_parallel_size)
        tokenizer = export_tokenizer(args, None)
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
