#!/usr/bin/env python3
"""Train a biLM token classifier: layer sweep, class-balanced probe, forward-only baseline, one artifact directory
(logic: megatron_tf/labeling/classifier/train.py; docs/classifier.md).

    python tools/train_classifier.py --forward-lm runs/lm_fwd --reversed-lm runs/lm_rev \
        --train-data P1 P2 P3 --label-name forget --label-threshold 0.5 --output runs/cls \
        [--forward-only-output runs/cls_fwd] [--layers -1 0 1] [--probe mlp] [--max-tokens-per-class 40000]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.labeling.classifier.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
