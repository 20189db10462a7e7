#!/usr/bin/env python3
"""Import a local Hugging Face LlamaForCausalLM into a megatron_tf checkpoint at any TP / PP layout.

    python tools/import_hf.py --hf llama_dir --output ckpt/llama [--tensor-model-parallel-size 2 \\
        --pipeline-model-parallel-size 2] [--tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model] \\
        [--seq-length 2048] [--overwrite]

Reads `config.json` and the weights (`model.safetensors`, sharded `model-*.safetensors` with their index, or
`pytorch_model.bin` read with weights_only=True) of --hf; the tokenizer is --hf's `tokenizer.model` (SentencePiece) or
else its `tokenizer.json`, unless --tokenizer-type / --tokenizer-model are given. It must hold the project's reserved
tokens `<|endoftext|>`, `<|hidden|>` and `<|pad|>` (megatron_tf/tokenizer/tokenizer.py), or --add-reserved-tokens
appends the missing ones (ids after the last; embedding rows added as the mean row when the model has too few); its
file is copied into the checkpoint. Writes the trainer's layout (docs/training.md): `latest`,
`iter_0000000/config.json`, `state.json` and `mp_rank_TT_PPP/model.safetensors` per TP/PP rank (no optimizer or RNG
state), built in a temporary sibling directory that is renamed into place; a non-empty --output is replaced only
with --overwrite and only if it is a checkpoint directory. The model flags that pretrain_gpt.py needs are printed
(and stored in config.json as `imported_from`):

    python pretrain_gpt.py <printed flags> --load ckpt/llama --finetune --save ckpt/continued --data-path ... \\
        --token-filter mask ...

(`--finetune`: weights only; iteration, data position, optimizer and RNG start fresh.) The RMU, attack and refusal
tools and tools/evaluate.py take the directory as any other checkpoint. What cannot be represented (biases, rope
scaling, sliding windows, other activations) is refused naming the config field: megatron_tf/model/hf_import.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args, opt  # noqa: E402
from megatron_tf.model.hf_export import load_state_dict_file  # noqa: E402
from megatron_tf.model.hf_import import (  # noqa: E402
    HFImportError,
    from_llama_state_dict,
    grow_vocab_rows,
    model_config_from_llama,
    shard_state_dict,
)
from megatron_tf.tokenizer.config import TokenizerOverride  # noqa: E402
from megatron_tf.tokenizer.hf_files import add_reserved_tokens  # noqa: E402
from megatron_tf.tokenizer.tokenizer import TokenizerError, build_tokenizer  # noqa: E402
from megatron_tf.utils.io import atomic_directory, read_json  # noqa: E402


@dataclass
class ImportConfig:
    """Which Hugging Face directory to import, where the checkpoint goes, and its layout."""

    hf: str = field(metadata=opt("A local Hugging Face LlamaForCausalLM directory."))
    output: str = field(metadata=opt("Checkpoint directory to write (as for --save)."))
    tensor_model_parallel_size: int = field(default=1, metadata=opt("TP size of the checkpoint."))
    pipeline_model_parallel_size: int = field(default=1, metadata=opt("PP size of the checkpoint."))
    seq_length: int | None = field(default=None, metadata=opt(
        "The run's --seq-length stored in the checkpoint (default: max_position_embeddings)."))
    add_reserved_tokens: bool = field(default=False, metadata=opt(
        "Append the reserved tokens the tokenizer lacks (<|endoftext|>, <|hidden|>, <|pad|>) to a copy of it, with "
        "embedding rows initialised to the mean row where the model has too few."))
    overwrite: bool = field(default=False, metadata=opt("Replace an existing checkpoint directory."))


def parse_args(argv=None) -> tuple[ImportConfig, TokenizerOverride]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataclass_args(p, ImportConfig, "import")
    add_dataclass_args(p, TokenizerOverride, "tokenizer (default: --hf's tokenizer.model (SentencePiece), else its "
                                             "tokenizer.json)")
    ns = p.parse_args(argv)
    return dataclass_from_args(ImportConfig, ns), dataclass_from_args(TokenizerOverride, ns)


def read_hf_weights(hf_dir: str) -> dict[str, torch.Tensor]:
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        files = sorted(set(read_json(index)["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(load_state_dict_file(os.path.join(hf_dir, f)))
        return out
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(hf_dir, name)):
            return load_state_dict_file(os.path.join(hf_dir, name))
    raise SystemExit(f"import_hf: {hf_dir} has no model.safetensors, model.safetensors.index.json or "
                     "pytorch_model.bin")


def resolve_tokenizer(args: ImportConfig, tok: TokenizerOverride) -> tuple[str, str | None]:
    if tok.tokenizer_type:
        return tok.tokenizer_type, tok.tokenizer_model
    for name, kind in (("tokenizer.model", "SentencePieceTokenizer"), ("tokenizer.json", "HFTokenizer")):
        if os.path.isfile(os.path.join(args.hf, name)):
            return kind, os.path.join(args.hf, name)
    raise SystemExit(f"import_hf: {args.hf} has no tokenizer.model or tokenizer.json; pass --tokenizer-type and "
                     "--tokenizer-model")


def model_flags(cfg) -> list[str]:
    """pretrain_gpt.py flags that rebuild this architecture (check_architecture compares them on --load)."""
    flags = ["--num-layers", cfg.num_layers, "--hidden-size", cfg.hidden_size, "--ffn-hidden-size",
             cfg.ffn_hidden_size, "--num-attention-heads", cfg.num_attention_heads]
    if cfg.group_query_attention:
        flags += ["--group-query-attention", "--num-query-groups", cfg.num_query_groups]
    if cfg.kv_channels is not None:
        flags += ["--kv-channels", cfg.kv_channels]
    flags += ["--max-position-embeddings", cfg.max_position_embeddings, "--make-vocab-size-divisible-by",
              cfg.make_vocab_size_divisible_by,
              "--untie-embeddings-and-output-weights" if not cfg.tied_embeddings else
              "--no-untie-embeddings-and-output-weights",
              "--norm-epsilon", repr(cfg.norm_epsilon), "--rotary-base", repr(cfg.rotary_base),
              "--init-method-std", repr(cfg.init_method_std)]
    return [str(f) for f in flags]


def check_output(out: str, overwrite: bool) -> None:
    if not os.path.exists(out) or (os.path.isdir(out) and not os.listdir(out)):
        return
    if not overwrite:
        raise SystemExit(f"import_hf: --output {out} exists and is not empty; pass --overwrite to replace it")
    if not os.path.isfile(os.path.join(out, "latest")):
        raise SystemExit(f"import_hf: --output {out} is not a checkpoint directory (no `latest` file): refusing to "
                         "replace it even with --overwrite")


def write_checkpoint(tmp: str, full: dict, cfg, tp: int, pp: int, run_config: dict) -> None:
    from safetensors.torch import save_file

    from megatron_tf.checkpoint.format import FORMAT, LATEST, iter_dirname, shard_dirname

    it = os.path.join(tmp, iter_dirname(0))
    for p in range(pp):
        for t in range(tp):
            shard = os.path.join(it, shard_dirname(t, p))
            os.makedirs(shard)
            save_file(shard_state_dict(full, cfg, tp, t, pp, p), os.path.join(shard, "model.safetensors"),
                      metadata={"format": FORMAT})
    # tokens seen / learned are unknown for an outside model: absent, not 0
    state = {"format": FORMAT, "iteration": 0, "consumed_samples": 0}
    for name, obj in (("config.json", {"format": FORMAT, "iteration": 0, **run_config}), ("state.json", state)):
        with open(os.path.join(it, name), "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True)
    try:  # checksums.json as the trainer writes it, where this version of the trainer has checksums
        from megatron_tf.checkpoint.integrity import merge_pieces
    except ImportError:
        merge_pieces = None
    if merge_pieces is not None:
        merge_pieces(it, [os.path.join(r, f) for r, _, fs in os.walk(it) for f in fs])
    with open(os.path.join(tmp, LATEST), "w", encoding="utf-8") as fh:
        fh.write(iter_dirname(0) + "\n")


def main(argv=None) -> int:
    args, tok = parse_args(argv)
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    out = os.path.abspath(args.output)
    check_output(out, args.overwrite)
    hf_config = read_json(os.path.join(args.hf, "config.json"))
    tok_type, tok_model = resolve_tokenizer(args, tok)
    with tempfile.TemporaryDirectory() as tok_tmp:
        added: list[str] = []
        if args.add_reserved_tokens and tok_model:
            kind = "hf" if tok_type in ("HFTokenizer", "HuggingFaceTokenizer") else "sp"
            copy = os.path.join(tok_tmp, os.path.basename(tok_model))
            added = add_reserved_tokens(kind, tok_model, copy)
            tok_model = copy
        try:
            tokenizer = build_tokenizer(tok_type, tok_model, tok.vocab_size)
        except TokenizerError as e:
            raise SystemExit(f"import_hf: {e}; --add-reserved-tokens appends the missing reserved tokens") from e
        hf_rows = int(hf_config["vocab_size"])
        try:
            weights, hf_config = grow_vocab_rows(read_hf_weights(args.hf), hf_config, tokenizer.vocab_size, tp)
            cfg = model_config_from_llama(hf_config, tp, tokenizer.vocab_size)
            full = from_llama_state_dict(weights, cfg, tp)
        except HFImportError as e:
            raise SystemExit(f"import_hf: {args.hf}: {e}") from e
        _write(args, tok.vocab_size, out, tp, pp, cfg, full, tokenizer, tok_type, tok_model, hf_rows, added)
    return 0


def _write(args: ImportConfig, vocab_size: int | None, out, tp, pp, cfg, full, tokenizer, tok_type, tok_model, hf_rows,
           added) -> None:
    from megatron_tf.tokenizer.config import TokenizerConfig
    from megatron_tf.training.arguments import Configs
    from megatron_tf.training.config import TrainingConfig

    if cfg.num_layers % pp and cfg.decoder_first_pipeline_num_layers is None:
        raise SystemExit(f"import_hf: {cfg.num_layers} layers cannot be split evenly over {pp} pipeline stages")
    seq = args.seq_length or cfg.max_position_embeddings
    tok_dest = os.path.join(out, "tokenizer", os.path.basename(tok_model)) if tok_model else None
    cfgs = Configs(model=cfg, training=TrainingConfig(train_iters=1, seq_length=seq),
                   tokenizer=TokenizerConfig(tokenizer_type=tok_type, tokenizer_model=tok_dest,
                                             vocab_size=vocab_size))
    cfgs_dict = cfgs.to_dict()
    cfgs_dict["parallel"].update(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    flags = model_flags(cfg)
    run_config = {"configs": cfgs_dict, "tokenizer": {**tokenizer.describe(), "path": tok_dest},
                  "parallel": {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp,
                               "data_parallel_size": 1, "world_size": tp * pp},
                  "padded_vocab_size": cfg.padded_vocab_size(tp), "torch_version": torch.__version__,
                  "imported_from": {"hf_dir": os.path.abspath(args.hf), "model_flags": flags,
                                    "hf_vocab_size": hf_rows, "added_tokens": added,
                                    "model_config": dataclasses.asdict(cfg)}}
    with atomic_directory(out) as tmp:
        write_checkpoint(tmp, full, cfg, tp, pp, run_config)
        if tok_model:
            os.makedirs(os.path.join(tmp, "tokenizer"))
            shutil.copyfile(tok_model, os.path.join(tmp, "tokenizer", os.path.basename(tok_model)))
    print(f"imported {args.hf} -> {out} (tp {tp}, pp {pp}, vocab {tokenizer.vocab_size} padded to "
          f"{cfg.padded_vocab_size(tp)}{'; added ' + ', '.join(added) if added else ''})\n"
          f"pretrain_gpt.py flags: {' '.join(flags)} --load {out} --finetune")


if __name__ == "__main__":
    sys.exit(main())
