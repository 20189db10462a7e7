#!/usr/bin/env bash
# Adversarial finetuning attack on one or more checkpoints: full finetuning and LoRA on held-apart medical text,
# constant LR, LRs x weight decays x seeds, forget loss every EVAL_INTERVAL steps, tokens-to-baseline metric, PNG
# curves, plus the benign-data control (general text). CPU-sized defaults (a few minutes per model on 2 cores).
#
#   MODELS="none=runs/demo/ckpt/none mask=runs/demo/ckpt/mask" bash examples/attack_finetune.sh
#   MODELS="none=ckpt/none remove=ckpt/remove" LRS="1e-5 1e-4 1e-3" WDS="0 0.1" SEEDS="1 2 3" ITERS=500 \
#     SEQ=1024 BATCH=8 EVAL_DOCS=200 OUT=runs/attack_1b bash examples/attack_finetune.sh
#
# Output: $OUT/results.json, results.csv, table.md, settings.csv, curves_*.png; finished runs are skipped on rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS="${MODELS:-none=runs/demo/ckpt/none mask=runs/demo/ckpt/mask}"
BASELINE="${BASELINE:-none}"
OUT="${OUT:-runs/attack}"
METHODS="${METHODS:-full lora}"
LRS="${LRS:-1e-3}"
WDS="${WDS:-0}"
SEEDS="${SEEDS:-1}"
BENIGN_SEEDS="${BENIGN_SEEDS:-1}"
ITERS="${ITERS:-24}"
EVAL_INTERVAL="${EVAL_INTERVAL:-6}"
BATCH="${BATCH:-4}"
SEQ="${SEQ:-128}"
EVAL_DOCS="${EVAL_DOCS:-8}"
ATTACK_TEXT="${ATTACK_TEXT:-data/demo/train/medical.jsonl.xz}"
BENIGN_TEXT="${BENIGN_TEXT:-data/demo/train/general.jsonl.xz}"
EVAL_TEXT="${EVAL_TEXT:-data/demo/heldout/medical.jsonl.xz}"
BLOCKLIST="${BLOCKLIST-data/demo/medical_terms.txt}"   # labels forget tokens of EVAL_TEXT (empty: none)
METRIC="${METRIC:-token_loss}"                         # token_loss (needs BLOCKLIST) | loss (all tokens)

for spec in $MODELS; do
  dir="${spec#*=}"
  if [[ ! -f "$dir/latest" && "$dir" == runs/demo/ckpt/* ]]; then python tools/demo.py; fi
done
# shellcheck disable=SC2086
python tools/finetune_attack.py --models $MODELS --baseline "$BASELINE" --output-dir "$OUT" \
  --attack-text $ATTACK_TEXT --benign-text $BENIGN_TEXT --eval-text $EVAL_TEXT --eval-docs "$EVAL_DOCS" \
  --methods $METHODS --attack-lrs $LRS --attack-weight-decays $WDS --attack-seeds $SEEDS \
  --benign-seeds "$BENIGN_SEEDS" --train-iters "$ITERS" --eval-interval "$EVAL_INTERVAL" \
  --micro-batch-size "$BATCH" --seq-length "$SEQ" --metric "$METRIC" ${BLOCKLIST:+--blocklist "$BLOCKLIST"}
