#!/usr/bin/env python3
"""Inspect a Megatron dataset prefix with its forget sidecars: documents, tokens, filtered fractions; or dump one
sample as JSON (format: docs/gpt_dataset.md, megatron_tf/data/inspect.py).

    python tools/inspect_dataset.py --data-prefix data/corpus_text_document --token-filter mask \
        --forget-threshold 0.5 --tokenizer-type NullTokenizer --vocab-size 32000 [--dump-sample 7]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args  # noqa: E402
from megatron_tf.data.config import FilterConfig  # noqa: E402
from megatron_tf.data.inspect import dump_sample, open_inspection  # noqa: E402
from megatron_tf.tokenizer.tokenizer import TOKENIZER_TYPES, build_tokenizer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-prefix", required=True, help="dataset prefix P (P.bin, P.idx)")
    p.add_argument("--seq-length", type=int, default=2048, help="tokens per sample (default 2048)")
    p.add_argument("--seed", type=int, default=1234, help="shuffle seed (default 1234)")
    p.add_argument("--tokenizer-type", default=None, choices=TOKENIZER_TYPES,
                   help="tokenizer (default NullTokenizer with --vocab-size)")
    p.add_argument("--tokenizer-model", default=None, help="tokenizer model file")
    p.add_argument("--vocab-size", type=int, default=None, help="vocabulary size for NullTokenizer")
    p.add_argument("--data-cache-path", default=None, help="index cache directory (default: in memory)")
    p.add_argument("--dump-sample", type=int, default=None, metavar="I",
                   help="print sample I as one JSON object {tokens, labels, loss_mask, forget}")
    add_dataclass_args(p, FilterConfig)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    ttype = args.tokenizer_type or "NullTokenizer"
    if ttype == "NullTokenizer" and args.vocab_size is None:
        raise SystemExit("give --tokenizer-type/--tokenizer-model, or --vocab-size for NullTokenizer")
    tokenizer = build_tokenizer(ttype, args.tokenizer_model, args.vocab_size)
    fcfg = dataclass_from_args(FilterConfig, args)
    summary, ds = open_inspection(args.data_prefix, tokenizer, fcfg, args.seq_length, args.seed,
                                  args.data_cache_path)
    if args.dump_sample is not None:
        if ds is None:
            raise SystemExit(f"{args.data_prefix}: fewer than {args.seq_length + 1} tokens, no sample to dump")
        if not 0 <= args.dump_sample < len(ds):
            raise SystemExit(f"--dump-sample {args.dump_sample} outside [0, {len(ds)})")
        sys.stdout.write(json.dumps(dump_sample(ds, args.dump_sample)) + "\n")
        return 0
    for k, v in summary.items():
        print(f"{k:28s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
