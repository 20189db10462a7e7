#!/usr/bin/env python3
"""RMU unlearning (Li et al. 2024) of a trainer checkpoint, with the evaluation before and after.

    python tools/rmu.py --load runs/demo/ckpt/none --save runs/rmu/ckpt --output-dir runs/rmu \\
        --forget-corpus data/demo/train/medical.jsonl.xz --retain-corpus data/demo/train/general.jsonl.xz \\
        --forget-text data/demo/heldout/medical.jsonl.xz --retain-text data/demo/heldout/biology.jsonl.xz \\
        --mmlu data/demo/eval/mmlu.jsonl.xz --medqa data/demo/eval/medqa.jsonl.xz --limit 40

Algorithm, defaults and outputs: docs/attacks.md. Logic: megatron_tf/posttrain/unlearning/.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args  # noqa: E402
from megatron_tf.evaluation.runner import EvaluationConfig  # noqa: E402
from megatron_tf.posttrain.unlearning.rmu import RMUConfig  # noqa: E402
from megatron_tf.posttrain.unlearning.runner import RMUJobConfig, format_summary, run_job  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataclass_args(p, RMUJobConfig)
    add_dataclass_args(p, RMUConfig)
    add_dataclass_args(p, EvaluationConfig, "evaluation before and after (docs/evaluation.md)")
    ns = p.parse_args(argv)
    result = run_job(dataclass_from_args(RMUJobConfig, ns), dataclass_from_args(RMUConfig, ns),
                     dataclass_from_args(EvaluationConfig, ns))
    print(format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
