#!/usr/bin/env python3
"""Write the synthetic knowledge probe: invented medical facts (forget domain) and invented biology facts (retain
domain) in several training paraphrases, and held-out paraphrases as a cloze test (docs/evaluation.md,
"Knowledge probe"; logic: megatron_tf/evaluation/knowledge_probe.py). Deterministic: the same options give
byte-identical files.

    python tools/make_knowledge_probe.py --output data/probe --seed 0 [--facts-per-domain 24] [--paraphrases 6] \\
        [--choices 4]
    # DIR/train.jsonl {"text", "domain"} -> mix into the training data (e.g. preprocess it as its own prefix)
    python tools/evaluate.py --load CKPT ... --knowledge data/probe/test.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.config.cli import add_dataclass_args, dataclass_from_args  # noqa: E402
from megatron_tf.evaluation.knowledge_probe import ProbeConfig, write_probe  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataclass_args(p, ProbeConfig)
    args = p.parse_args(argv)
    try:
        info = write_probe(dataclass_from_args(ProbeConfig, args))
    except (ValueError, OSError) as e:
        print(f"make_knowledge_probe: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
