#!/usr/bin/env python3
"""Tokenize JSONL corpora into Megatron `.bin`/`.idx` datasets (Megatron-LM's tools/preprocess_data.py flags).

    python tools/preprocess_data.py --input data/demo/train/*.jsonl.xz --output-prefix out/demo \\
        --tokenizer-type SentencePieceTokenizer --tokenizer-model data/demo/tokenizer/demo_sp.model \\
        --json-keys text --append-eod --workers 2

writes out/demo_text_document.{bin,idx,meta.json}. Killed runs resume when the same command is run again.
Across processes and nodes, one input file per task (ranks share a filesystem; output byte-identical):

    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        tools/preprocess_data.py --input shards/*.jsonl.zst --output-prefix out/corpus ... --workers 2

All logic lives in megatron_tf/data/preprocess.py (one process: preprocess_run.py; torchrun: preprocess_dist.py).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args  # noqa: E402
from megatron_tf.data.preprocess import PreprocessConfig, preprocess  # noqa: E402
from megatron_tf.tokenizer.tokenizer import TokenizerError  # noqa: E402
from megatron_tf.utils.dist_work import DistWorkError  # noqa: E402
from megatron_tf.utils.jsonl import InputError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataclass_args(parser, PreprocessConfig)
    args = parser.parse_args(argv)
    for flag in ("input", "output_prefix"):
        if not hasattr(args, flag):
            parser.error(f"--{flag.replace('_', '-')} is required")
    cfg = dataclass_from_args(PreprocessConfig, args)
    try:
        preprocess(cfg)
    except (InputError, TokenizerError, DistWorkError) as e:
        print(f"preprocess_data: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
