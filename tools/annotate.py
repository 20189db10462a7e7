#!/usr/bin/env python3
"""Label every token of a Megatron dataset and write forget sidecars beside it (format: docs/sidecar_format.md;
logic: megatron_tf/labeling/annotate.py, annotate_runner.py, registry.py). Resumable: re-run the same command
after an interruption.

    python tools/annotate.py --data-prefix data/corpus_text_document --labeler blocklist \
        --terms data/demo/medical_terms.txt --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model \
        [--name forget] [--write-mask-threshold 0.5] [--doc-frac-threshold 0.5] [--workers 2] [--chunk-docs 1024]

    torchrun --standalone --nproc-per-node 8 tools/annotate.py --data-prefix P ... [--dist-timeout 600]
        (ranks label disjoint chunks, rank 0 merges; several nodes: examples/slurm_annotate.sh, docs/annotation.md)

    python tools/annotate.py --data-prefix P ... --merge-only      (merge the chunks there; refuses if any is missing)

    python tools/annotate.py --data-prefix P --labeler sae --sae-reference-lm LM_DIR --sae SAE_DIR_OR_RELEASE:ID \
        --sae-latents latents.json [--sae-min-seed-latents 2] [--sae-device cuda] --tokenizer-type ...
        (docs/sae_labels.md)

    python tools/annotate.py --data-prefix P --labeler classifier --classifier CLS_DIR --tokenizer-type ... \
        [--classifier-device auto] [--classifier-batch-tokens 16384] [--workers N] \
        [--pretrain-params 1.8e9 --pretrain-tokens 3.6e10]          (docs/classifier.md)
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.labeling.annotate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
