#!/usr/bin/env python3
"""Train a BPE tokenizer with the reserved tokens <|endoftext|>, <|hidden|>, <|pad|> on JSONL corpora.

    python tools/train_tokenizer.py --input data/demo/train/*.jsonl.xz --output tok.model --vocab-size 8192
    python tools/train_tokenizer.py --type hf --input corpus.jsonl.gz --output tokenizer.json --vocab-size 8192

All logic lives in megatron_tf/tokenizer/train.py.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args  # noqa: E402
from megatron_tf.tokenizer.train import TrainTokenizerConfig, train_tokenizer  # noqa: E402
from megatron_tf.utils.jsonl import InputError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataclass_args(parser, TrainTokenizerConfig)
    args = parser.parse_args(argv)
    for flag in ("input", "output"):
        if not hasattr(args, flag):
            parser.error(f"--{flag.replace('_', '-')} is required")
    try:
        train_tokenizer(dataclass_from_args(TrainTokenizerConfig, args))
    except InputError as e:
        print(f"train_tokenizer: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
