#!/usr/bin/env python3
"""Weak token labels from sparse-autoencoder latents (method and examples: docs/sae_labels.md;
logic: megatron_tf/labeling/sae/).

    python tools/sae_label.py select --sae-reference-lm gemma-2-9b \
        --sae gemma-scope-9b-pt-res-canonical:layer_31/width_16k/canonical \
        --domain medical.jsonl.xz --other biology.jsonl.xz general.jsonl.xz --output-dir sae_out
    python tools/sae_label.py thresholds --sae-latents neuronpedia.json --reference sample.jsonl \
        --output-dir sae_out
    python tools/sae_label.py label --data-prefix data/medical_text_document ... --sae-latents sae_out/latents.json \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model --output-dir sae_out/report
    python tools/sae_label.py report --data-prefix P1 P2 --tokenizer-type ... --output-dir report
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_tf.labeling.sae.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
