#!/usr/bin/env bash
# Refusal training: chat SFT (medical prompts -> a fixed refusal, others -> normal answers) on each arm, then the
# refusal rate on held-out medical prompts and the false-refusal rate on held-out other prompts (exact template
# match of greedy decoding; no judge). Sets: data/demo/refusal (built by tools/build_refusal_sets.py, see
# data/demo/refusal/README.md). CPU-sized defaults.
#
#   bash examples/refusal.sh
#   MODELS="none=ckpt/none remove=ckpt/remove" ITERS=500 LR=2e-5 BATCH=32 EVAL_LIMIT= OUT=runs/refusal_1b \
#     bash examples/refusal.sh
#
# Output: $OUT/<model>.json (skipped on rerun), results.json, results.csv, table.md, refusal_rates.png.
set -euo pipefail
cd "$(dirname "$0")/.."

CKPT_ROOT="${CKPT_ROOT:-runs/demo/ckpt}"
MODELS="${MODELS:-none=$CKPT_ROOT/none mask=$CKPT_ROOT/mask remove=$CKPT_ROOT/remove document=$CKPT_ROOT/document}"
OUT="${OUT:-runs/refusal}"
ITERS="${ITERS:-40}"
LR="${LR:-1e-3}"
BATCH="${BATCH:-8}"
MAXLEN="${MAXLEN:-96}"
EVAL_LIMIT="${EVAL_LIMIT-40}"                # prompts per domain (empty: all)
TRAIN_SET="${TRAIN_SET:-data/demo/refusal/train.jsonl.xz}"
EVAL_SET="${EVAL_SET:-data/demo/refusal/eval.jsonl.xz}"

for spec in $MODELS; do
  dir="${spec#*=}"
  if [[ ! -f "$dir/latest" && "$dir" == runs/demo/ckpt/* ]]; then python tools/demo.py; fi
done
extra=()
[[ -n "$EVAL_LIMIT" ]] && extra+=(--eval-limit "$EVAL_LIMIT")
# shellcheck disable=SC2086
python tools/refusal_train.py --models $MODELS --train-set "$TRAIN_SET" --eval-set "$EVAL_SET" --output-dir "$OUT" \
  --train-iters "$ITERS" --lr "$LR" --micro-batch-size "$BATCH" --max-length "$MAXLEN" "${extra[@]}"
