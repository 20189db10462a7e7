#!/usr/bin/env bash
# A tiny GPT on the bundled demo corpus, on CPU, in a few minutes (no GPU, no network):
#   1. tokenize data/demo (train: medical + biology + general; held-out: one prefix per domain)   [once]
#   2. label forget tokens with the medical blocklist (sidecars beside each dataset)               [once]
#   3. train 4 layers x 256 wide (~7M parameters) on TRAIN_TOKENS learned tokens with TOKEN_FILTER,
#      evaluating on the held-out forget (medical), retain (biology) and general sets.
#
#   TOKEN_FILTER=mask bash examples/pretrain_gpt_tiny.sh            # none | mask | remove | document
#   TOKEN_FILTER=none OUT=runs/tiny_none bash examples/pretrain_gpt_tiny.sh
# Resumable: rerunning continues from OUT/latest (kill it at any point).
set -euo pipefail
cd "$(dirname "$0")/.."

TOKEN_FILTER="${TOKEN_FILTER:-mask}"
FORGET_THRESHOLD="${FORGET_THRESHOLD:-0.5}"
DOC_THRESHOLD="${DOC_THRESHOLD:-0.05}"          # --token-filter document: drop documents with mean score >= this
TRAIN_TOKENS="${TRAIN_TOKENS:-300000}"          # learned (unmasked target) tokens: equal across filter arms
DATA="${DATA:-runs/demo_data}"
OUT="${OUT:-runs/tiny_${TOKEN_FILTER}}"
NPROC="${NPROC:-1}"                              # >1: data parallel over CPU processes (torchrun, gloo)
TOK=data/demo/tokenizer/demo_sp.model
TOKARGS=(--tokenizer-type SentencePieceTokenizer --tokenizer-model "$TOK")

prepare() {  # $1 = output base, $2.. = inputs
  local base=$1; shift
  local prefix="${base}_text_document"
  if [[ ! -f "$prefix.idx" ]]; then
    python tools/preprocess_data.py --input "$@" --output-prefix "$base" "${TOKARGS[@]}" --json-keys text \
      --append-eod --workers 2
  fi
  if [[ ! -f "$prefix.forget.tokscores" ]]; then
    python tools/annotate.py --data-prefix "$prefix" --labeler blocklist --terms data/demo/medical_terms.txt \
      "${TOKARGS[@]}" --write-mask-threshold "$FORGET_THRESHOLD"
  fi
}

mkdir -p "$DATA"
prepare "$DATA/demo_train" data/demo/train/medical.jsonl.xz data/demo/train/biology.jsonl.xz \
  data/demo/train/general.jsonl.xz
for dom in medical biology general; do
  prepare "$DATA/heldout_$dom" "data/demo/heldout/$dom.jsonl.xz"
done

FILTER_ARGS=(--token-filter "$TOKEN_FILTER" --forget-threshold "$FORGET_THRESHOLD")
[[ "$TOKEN_FILTER" == document ]] && FILTER_ARGS+=(--document-threshold "$DOC_THRESHOLD")
LAUNCH=(python)
((NPROC > 1)) && LAUNCH=(torchrun --standalone --nproc_per_node "$NPROC")

"${LAUNCH[@]}" pretrain_gpt.py \
  --num-layers 4 --hidden-size 256 --num-attention-heads 4 --seq-length 128 \
  --micro-batch-size 16 --global-batch-size 32 --train-tokens "$TRAIN_TOKENS" \
  --lr 2e-3 --min-lr 2e-4 --lr-warmup-fraction 0.05 --lr-decay-style cosine --weight-decay 0.1 --clip-grad 1.0 \
  --adam-beta2 0.95 "${TOKARGS[@]}" \
  --data-path "$DATA/demo_train_text_document" --split 98,2,0 --num-workers 1 "${FILTER_ARGS[@]}" \
  --eval-data-path forget="$DATA/heldout_medical_text_document" retain="$DATA/heldout_biology_text_document" \
  general="$DATA/heldout_general_text_document" \
  --save "$OUT" --load "$OUT" --save-interval 50 --eval-interval 50 --eval-iters 4 --log-interval 10 --seed 1234
