#!/usr/bin/env bash
# A 1.3B GPT (24 layers, hidden 2048, 16 heads, SwiGLU, RoPE, seq 2048) on one node of 8 GPUs:
# tensor parallel 2 (+ sequence parallel) x pipeline parallel 2 (1F1B) x data parallel 2 with DeepSpeed ZeRO-1
# (examples/ds_config_zero1.json: Adam states partitioned over the 2 data-parallel ranks). bf16 autocast.
#
#   DATA_PATH=/data/pile_text_document TOKENIZER_MODEL=/data/tok.model TOKEN_FILTER=mask \
#     bash examples/pretrain_gpt_1b.sh
# Prepare DATA_PATH with tools/preprocess_data.py and its forget sidecars with tools/annotate.py (docs/).
# TOKEN_FILTER: none | mask | remove | document. The budget counts LEARNED tokens, equal across filter arms.
# Without DeepSpeed: LAUNCHER=torchrun (torch DDP). Resumes from SAVE/latest when rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${DATA_PATH:?set DATA_PATH to a dataset prefix (or a blend 'W1 P1 W2 P2')}"
: "${TOKENIZER_MODEL:?set TOKENIZER_MODEL}"
TOKENIZER_TYPE="${TOKENIZER_TYPE:-SentencePieceTokenizer}"
TOKEN_FILTER="${TOKEN_FILTER:-none}"
FORGET_THRESHOLD="${FORGET_THRESHOLD:-0.5}"
DOC_THRESHOLD="${DOC_THRESHOLD:-0.05}"
TRAIN_TOKENS="${TRAIN_TOKENS:-26000000000}"     # ~20 tokens per parameter (Chinchilla)
SAVE="${SAVE:-runs/gpt_1b_${TOKEN_FILTER}}"
GPUS="${GPUS:-8}"
LAUNCHER="${LAUNCHER:-deepspeed}"

FILTER_ARGS=(--token-filter "$TOKEN_FILTER" --forget-threshold "$FORGET_THRESHOLD")
[[ "$TOKEN_FILTER" == document ]] && FILTER_ARGS+=(--document-threshold "$DOC_THRESHOLD")
if [[ "$LAUNCHER" == deepspeed ]]; then
  LAUNCH=(deepspeed --num_gpus "$GPUS" pretrain_gpt.py --deepspeed --deepspeed_config examples/ds_config_zero1.json)
else
  LAUNCH=(torchrun --standalone --nproc_per_node "$GPUS" pretrain_gpt.py)
fi
export CUDA_DEVICE_MAX_CONNECTIONS=1 OMP_NUM_THREADS=4

"${LAUNCH[@]}" \
  --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --sequence-parallel \
  --num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length 2048 \
  --micro-batch-size 4 --global-batch-size 512 --train-tokens "$TRAIN_TOKENS" \
  --lr 3e-4 --min-lr 3e-5 --lr-warmup-iters 2000 --lr-decay-style cosine --weight-decay 0.1 --clip-grad 1.0 \
  --adam-beta1 0.9 --adam-beta2 0.95 --adam-eps 1e-8 --bf16 \
  --tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL" \
  --data-path $DATA_PATH --split 969,30,1 --num-workers 2 "${FILTER_ARGS[@]}" \
  ${EVAL_DATA_PATH:+--eval-data-path $EVAL_DATA_PATH} \
  --save "$SAVE" --load "$SAVE" --save-interval 1000 --eval-interval 1000 --eval-iters 20 --log-interval 10 \
  --seed 1234 "$@"
