#!/usr/bin/env python3
"""Pretrain a GPT with tensor, pipeline and data parallelism and token-level data filtering.

    python pretrain_gpt.py --num-layers 2 --hidden-size 128 ... --data-path PREFIX --token-filter mask
    torchrun --nproc_per_node 8 pretrain_gpt.py --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 ...
    deepspeed pretrain_gpt.py --deepspeed --deepspeed_config examples/ds_config_zero1.json ...

Flags: `python pretrain_gpt.py --help` (Megatron-LM's names). Logic: megatron_tf/training (docs/training.md).
Exit status: 0 when the run completes; 1 when it diverged (a NaN/inf loss or gradient norm beyond
--skip-nonfinite-steps: the error names the iteration and the last checkpoint, which `latest` still names).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from megatron_tf.training import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
