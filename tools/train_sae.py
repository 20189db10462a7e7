#!/usr/bin/env python3
"""Train a small sparse autoencoder with sae-lens on a reference LM's residual stream after block L
(logic: megatron_tf/labeling/sae/train.py; for Gemma-2 use the Gemma Scope SAEs instead).

    python tools/train_sae.py --sae-reference-lm tiny_lm/ --sae-hook-layer 1 --data data/demo/train/*.jsonl.xz \
        --d-sae 512 --total-tokens 200000 --output tiny_sae/
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.labeling.sae.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main())
