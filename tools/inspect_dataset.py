#!/usr/bin/env python3
"""Inspect a Megatron dataset prefix, or the train split of a --data-path blend, with its forget sidecars:
documents, tokens, filtered fractions, per-component samples and epochs; or dump one sample as JSON (format:
docs/gpt_dataset.md, megatron_tf/data/inspect.py).

    python tools/inspect_dataset.py --data-prefix data/corpus_text_document --token-filter mask \\
        --forget-threshold 0.5 --tokenizer-type NullTokenizer --vocab-size 32000 [--dump-sample 7]
    python tools/inspect_dataset.py --data-path 0.5 data/med 0.5 data/bio --split 969,30,1 --train-samples 100000 \\
        --token-filter document --document-filter-fraction 0.1 --vocab-size 32000 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args  # noqa: E402
from megatron_tf.data.config import FilterConfig, GPTDatasetConfig  # noqa: E402
from megatron_tf.data.inspect import dump_sample, inspect_train_split, open_inspection  # noqa: E402
from megatron_tf.tokenizer.tokenizer import TOKENIZER_TYPES, build_tokenizer  # noqa: E402

COMPONENT_KEYS = ("weight_given", "weight", "samples", "tokens_total", "tokens_kept", "epochs", "prefix")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--data-prefix", default=None,
                   help="one dataset prefix P (P.bin, P.idx), taken whole as one split, one epoch; or use "
                        "--data-path / --train-data-path (the trainer's flags, below) for the train split of a blend")
    p.add_argument("--train-samples", type=int, default=None,
                   help="samples the train split is built for (needed by a weighted blend); or --train-iters")
    p.add_argument("--train-iters", type=int, default=None, help="with --global-batch-size: train samples = I x G")
    p.add_argument("--global-batch-size", type=int, default=None, help="samples per step (with --train-iters)")
    p.add_argument("--seq-length", type=int, default=2048, help="tokens per sample (default 2048)")
    p.add_argument("--seed", type=int, default=1234, help="shuffle seed (default 1234)")
    p.add_argument("--tokenizer-type", default=None, choices=TOKENIZER_TYPES,
                   help="tokenizer (default NullTokenizer with --vocab-size)")
    p.add_argument("--tokenizer-model", default=None, help="tokenizer model file")
    p.add_argument("--vocab-size", type=int, default=None, help="vocabulary size for NullTokenizer")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on one line")
    p.add_argument("--dump-sample", type=int, default=None, metavar="I",
                   help="print sample I as one JSON object {tokens, labels, loss_mask, forget}")
    add_dataclass_args(p, GPTDatasetConfig, "data (as pretrain_gpt.py; --data-cache-path default with "
                                            "--data-prefix: in memory)")
    add_dataclass_args(p, FilterConfig)
    return p.parse_args(argv)


def train_samples(args) -> int | None:
    if args.train_samples is not None and args.train_iters is not None:
        raise SystemExit("give --train-samples or --train-iters, not both")
    if args.train_iters is not None:
        if args.global_batch_size is None:
            raise SystemExit("--train-iters needs --global-batch-size")
        return args.train_iters * args.global_batch_size
    if args.train_samples is not None and args.train_samples < 1:
        raise SystemExit(f"--train-samples must be >= 1, got {args.train_samples}")
    return args.train_samples


def open_data(args, tokenizer, fcfg):
    blend_given = any(getattr(args, k, None) for k in ("data_path", "train_data_path", "valid_data_path",
                                                       "test_data_path"))
    if (args.data_prefix is None) == (not blend_given):
        raise SystemExit("give --data-prefix, or --data-path / --train-data-path (not both)")
    if args.data_prefix is not None:
        return open_inspection(args.data_prefix, tokenizer, fcfg, args.seq_length, args.seed,
                               getattr(args, "data_cache_path", None))
    cfg = dataclass_from_args(GPTDatasetConfig, args)
    cfg = dataclasses.replace(cfg, seq_length=args.seq_length, seed=args.seed)
    return inspect_train_split(cfg, fcfg, tokenizer, train_samples(args))


def main(argv=None) -> int:
    args = parse_args(argv)
    ttype = args.tokenizer_type or "NullTokenizer"
    if ttype == "NullTokenizer" and args.vocab_size is None:
        raise SystemExit("give --tokenizer-type/--tokenizer-model, or --vocab-size for NullTokenizer")
    tokenizer = build_tokenizer(ttype, args.tokenizer_model, args.vocab_size)
    fcfg = dataclass_from_args(FilterConfig, args)
    summary, ds = open_data(args, tokenizer, fcfg)
    where = args.data_prefix or "the train split"
    if args.dump_sample is not None:
        if ds is None:
            raise SystemExit(f"{where}: fewer than {args.seq_length + 1} tokens, no sample to dump")
        if not 0 <= args.dump_sample < len(ds):
            raise SystemExit(f"--dump-sample {args.dump_sample} outside [0, {len(ds)})")
        sys.stdout.write(json.dumps(dump_sample(ds, args.dump_sample)) + "\n")
        return 0
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return 0
    for k, v in summary.items():  # one "key value" line each (scripts split on the first blank)
        if k != "components":
            print(f"{k:28s} {v}")
    for k, r in enumerate(summary["components"]):
        print(f"{f'component[{k}]':28s} " + " ".join(f"{c}={r[c]}" for c in COMPONENT_KEYS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
