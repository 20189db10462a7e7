#!/usr/bin/env bash
# SAE weak labels with a megatron_tf checkpoint as the reference LM (the classifier demo's forward LM, 4 x 128,
# 2.85M parameters, 1.2M training tokens): train an SAE on block 2, select medical latents on the TRAINING slices,
# label the HELD-OUT slices, compare with the labels of the whole blocklist (both halves of the held-out-terms
# protocol; annotation blocklist_all, made here). ~6 minutes on 2 cores. Run from the repo root after
# `python -m megatron_tf.demo.classifier_run` (which makes runs/classifier_demo). The committed files beside this
# script are copied here by its last lines: latents_$arch.md (from `sae_label.py select`), label_summary_$arch.json
# (from `sae_label.py label`) and vs_blocklist_$arch.json (from `eval_classifier.py`: the SAE labels' stored scores
# against the whole blocklist's labels; a token is labelled when its score is 1, the `natural` block at threshold
# 1.0), nothing else.
set -euo pipefail
cd "$(dirname "$0")/../.."
LM=runs/classifier_demo/lm_forward
D=runs/classifier_demo/data/data
OUT=${OUT:-runs/sae_real}
mkdir -p "$OUT"
HELD=($D/heldout_{medical,biology,general}_text_document)
for p in "${HELD[@]}"; do
  python tools/annotate.py --data-prefix "$p" --labeler blocklist --terms data/demo/medical_terms.txt \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model data/demo/tokenizer/demo_sp.model --name blocklist_all \
    --no-progress
done
TRAIN=(data/demo/train/medical.jsonl.xz data/demo/train/biology.jsonl.xz data/demo/train/general.jsonl.xz)
for arch in standard topk; do
  python tools/train_sae.py --sae-reference-lm $LM --sae-hook-layer 2 --sae-context-size 256 --data "${TRAIN[@]}" \
    --max-docs 300 --max-chars 4000 --d-sae 1024 --architecture $arch --topk 16 --total-tokens 300000 \
    --output "$OUT/sae_$arch"
  python tools/sae_label.py select --sae-reference-lm $LM --sae "$OUT/sae_$arch" --sae-context-size 256 \
    --domain "${TRAIN[0]}" --other "${TRAIN[1]}" "${TRAIN[2]}" --max-docs 150 --top-k 16 --output-dir "$OUT/sel_$arch"
  python tools/sae_label.py label --sae-reference-lm $LM --sae "$OUT/sae_$arch" --sae-context-size 256 \
    --sae-latents "$OUT/sel_$arch/latents.json" --data-prefix "${HELD[@]}" \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model data/demo/tokenizer/demo_sp.model --name "sae_$arch" \
    --output-dir "$OUT/rep_$arch" --no-progress
  python tools/eval_classifier.py --data "${HELD[@]}" --label-name blocklist_all --sidecar-baseline "sae_$arch" \
    --output "$OUT/cmp_$arch"
  cp "$OUT/sel_$arch/latents.md" "results/sae_demo/latents_$arch.md"
  cp "$OUT/rep_$arch/summary.json" "results/sae_demo/label_summary_$arch.json"
  cp "$OUT/cmp_$arch/report.json" "results/sae_demo/vs_blocklist_$arch.json"
done
