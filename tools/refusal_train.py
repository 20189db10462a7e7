#!/usr/bin/env python3
"""Refusal training (chat SFT: medical prompts -> refusal, others -> answers) and refusal / false-refusal rates.

    python tools/refusal_train.py --models none=runs/demo/ckpt/none mask=runs/demo/ckpt/mask \\
        --train-set data/demo/refusal/train.jsonl.xz --eval-set data/demo/refusal/eval.jsonl.xz \\
        --train-iters 200 --lr 1e-4 --output-dir runs/refusal

Format, detector and sets: docs/attacks.md. Logic: megatron_tf/posttrain/refusal/.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args  # noqa: E402
from megatron_tf.posttrain.refusal.train import RefusalConfig, markdown_table, run_refusal  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataclass_args(p, RefusalConfig)
    print(markdown_table(run_refusal(dataclass_from_args(RefusalConfig, p.parse_args(argv)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
