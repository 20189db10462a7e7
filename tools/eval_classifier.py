#!/usr/bin/env python3
"""Evaluate token classifiers and lexical baselines against sidecar labels: AUROC, P/R/F1 at the F1-optimal
threshold (class-balanced and natural base rate), calibration, PR curve plots
(logic: megatron_tf/labeling/classifier/evaluate.py; docs/classifier.md).

    python tools/eval_classifier.py --classifier runs/cls runs/cls_fwd --data H1 H2 H3 --label-name forget \
        --sidecar-baseline forget --output runs/cls_eval
    # held-out terms: score against the half the teacher never used, recall on tokens only it marks
    python tools/eval_classifier.py --classifier runs/cls --data H1 H2 H3 --label-name heldout_terms \
        --sidecar-baseline forget --novel-from forget --output runs/cls_eval_heldout
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.labeling.classifier.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
