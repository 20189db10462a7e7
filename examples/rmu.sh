#!/usr/bin/env bash
# RMU unlearning (Li et al. 2024) of the unfiltered demo model, evaluated before and after (CPU, a few minutes).
#
#   bash examples/rmu.sh                                   # defaults: the tiny demo checkpoint runs/demo/ckpt/none
#   LOAD=ckpt/none OUT=runs/rmu_1b ITERS=150 LR=5e-5 ALPHA=1200 LAYER=7 MAXLEN=512 BATCH=4 bash examples/rmu.sh
#
# Writes $OUT/ckpt (a derived TP=1 checkpoint, usable by tools/evaluate.py and the attack launchers) and
# $OUT/rmu.json, rmu_summary.csv, rmu_steps.csv, rmu_losses.png. Rerunning skips a finished job (OVERWRITE=1 redoes).
# Missing demo checkpoints are trained first with `python tools/demo.py` (about 5-6 minutes, resumable).
# Tiny-demo defaults: LR 1e-2 and a short max length because the 2-layer CPU model needs large steps to move in
# 60 iterations; the literature's settings (lr 5e-5..1e-4, alpha 100-1200, 150+ steps of 512 tokens) are for
# billion-parameter models.
set -euo pipefail
cd "$(dirname "$0")/.."

LOAD="${LOAD:-runs/demo/ckpt/none}"
OUT="${OUT:-runs/rmu}"
ITERS="${ITERS:-60}"
LR="${LR:-1e-2}"
ALPHA="${ALPHA:-10}"
LAYER="${LAYER:-0}"                     # tiny demo: layer 0 of 2 (empty: num_layers // 2)
COEFF_SCALE="${COEFF_SCALE:-4}"         # c = COEFF_SCALE x measured activation norm (STEERING_COEFF fixes c)
STEERING_COEFF="${STEERING_COEFF:-}"
MAXLEN="${MAXLEN:-128}"
BATCH="${BATCH:-4}"
CORPUS_LIMIT="${CORPUS_LIMIT:-300}"     # documents per RMU corpus
EVAL_LIMIT="${EVAL_LIMIT:-20}"          # documents per held-out set / questions per MCQ set
FORGET_CORPUS="${FORGET_CORPUS:-data/demo/train/medical.jsonl.xz}"
RETAIN_CORPUS="${RETAIN_CORPUS:-data/demo/train/general.jsonl.xz data/demo/train/biology.jsonl.xz}"

if [[ ! -f "$LOAD/latest" && "$LOAD" == runs/demo/ckpt/* ]]; then
  python tools/demo.py
fi
extra=()
[[ -n "$LAYER" ]] && extra+=(--layer-id "$LAYER")
[[ -n "$STEERING_COEFF" ]] && extra+=(--steering-coeff "$STEERING_COEFF")
[[ "${OVERWRITE:-0}" == 1 ]] && extra+=(--overwrite)
# shellcheck disable=SC2086
python tools/rmu.py --load "$LOAD" --save "$OUT/ckpt" --output-dir "$OUT" \
  --forget-corpus $FORGET_CORPUS --retain-corpus $RETAIN_CORPUS --corpus-limit "$CORPUS_LIMIT" \
  --train-iters "$ITERS" --lr "$LR" --alpha "$ALPHA" --steering-coeff-scale "$COEFF_SCALE" \
  --max-length "$MAXLEN" --micro-batch-size "$BATCH" \
  --forget-text data/demo/heldout/medical.jsonl.xz --retain-text data/demo/heldout/biology.jsonl.xz \
  --blocklist data/demo/medical_terms.txt --mmlu data/demo/eval/mmlu.jsonl.xz --medqa data/demo/eval/medqa.jsonl.xz \
  --limit "$EVAL_LIMIT" "${extra[@]}"
