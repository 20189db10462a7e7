#!/usr/bin/env python3
"""Adversarial finetuning attack sweep (full / LoRA x LRs x weight decays x seeds) and the tokens-to-baseline metric.

    python tools/finetune_attack.py --models none=runs/demo/ckpt/none mask=runs/demo/ckpt/mask \\
        --baseline none --attack-text data/demo/train/medical.jsonl.xz --benign-text data/demo/train/general.jsonl.xz \\
        --eval-text data/demo/heldout/medical.jsonl.xz --attack-lrs 1e-4 1e-3 --attack-seeds 1 2 \\
        --train-iters 100 --eval-interval 10 --output-dir runs/attack

Finished runs are skipped (resume); results.json / results.csv / table.md / curves_*.png in --output-dir.
Metric and layout: docs/attacks.md. Logic: megatron_tf/posttrain/attacks/.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args  # noqa: E402
from megatron_tf.posttrain.attacks.sweep import AttackConfig, markdown_table, run_sweep  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataclass_args(p, AttackConfig)
    res = run_sweep(dataclass_from_args(AttackConfig, p.parse_args(argv)))
    print(markdown_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
