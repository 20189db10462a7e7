#!/usr/bin/env python3
"""Build the refusal-training / refusal-evaluation sets (chat prompts; medical -> refusal, others -> answers).

    python tools/build_refusal_sets.py --medquad ../shared/data/medical/medquad_nih_qa.jsonl.xz \\
        --medical-text data/demo/train/medical.jsonl.xz \\
        --normal-text data/demo/train/biology.jsonl.xz data/demo/train/general.jsonl.xz \\
        --exclude data/demo/eval/mmlu.jsonl.xz data/demo/eval/medqa.jsonl.xz data/demo/eval/medmcqa.jsonl.xz \\
        --output-dir data/demo/refusal

How the sets are built and split: docs/attacks.md. Logic: megatron_tf/posttrain/refusal/build_sets.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args  # noqa: E402
from megatron_tf.posttrain.refusal.build_sets import RefusalSetConfig, build_and_write  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataclass_args(p, RefusalSetConfig)
    stats = build_and_write(dataclass_from_args(RefusalSetConfig, p.parse_args(argv)))
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
