#!/usr/bin/env python3
"""Export a megatron_tf GPT (SwiGLU + RMSNorm + RoPE) to a Hugging Face LlamaForCausalLM directory.

    python tools/export_hf.py --model-config model_config.json --state-dict rank0.safetensors rank1.safetensors \
        --tensor-model-parallel-size 2 --output exports/llama [--dtype bfloat16] [--keep-padded-vocab]

    python tools/export_hf.py --load runs/x [--ckpt-step 2000] --output exports/llama

--load reads a trainer checkpoint directory (its `latest`, or --ckpt-step N, or an iter_* directory): config and
per-rank shards come from there (docs/training.md). Otherwise --model-config is the ModelConfig as JSON
(ModelConfig.to_dict(); vocab_size set). --state-dict lists one file per rank (.safetensors, or a torch file read
with weights_only=True), pipeline stage by stage and TP ranks in order within a stage. The output directory
(config.json, model.safetensors, megatron_tf_config.json) is written atomically. Logic:
megatron_tf/model/hf_export.py (format and mapping: docs/model.md).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megatron_tf.model.hf_export import export_llama, load_model_config, merge_state_dict_files  # noqa: E402

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
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.load:
        from megatron_tf.training.api import merged_state_dict
        from megatron_tf.training.checkpoint import CheckpointError, resolve_checkpoint_dir

        ckpt_dir = resolve_checkpoint_dir(args.load, args.ckpt_step)
        if ckpt_dir is None:
            raise CheckpointError(f"--load {args.load}: no checkpoint there")
        sd, config, _ = merged_state_dict(ckpt_dir)
    elif args.model_config and args.state_dict:
        config = load_model_config(args.model_config)
        sd = merge_state_dict_files(args.state_dict, config, args.tensor_model_parallel_size,
                                    args.pipeline_model_parallel_size)
    else:
        raise SystemExit("export_hf: give --load CHECKPOINT_DIR, or --model-config and --state-dict")
    out = export_llama(sd, config, args.output, dtype=DTYPES[args.dtype], keep_padded_vocab=args.keep_padded_vocab,
                       overwrite=args.overwrite, max_position_embeddings=args.max_position_embeddings,
                       bos_token_id=args.bos_token_id, eos_token_id=args.eos_token_id,
                       pad_token_id=args.pad_token_id)
    print(f"exported LlamaForCausalLM to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
