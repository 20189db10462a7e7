#!/usr/bin/env bash
#SBATCH --job-name=megatron_tf
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
# Several nodes: one torchrun per node (srun), rendezvous on the first node, NCCL. 4 nodes x 8 GPUs = 32 ranks:
# tensor parallel 4 within a node (NVLink), pipeline parallel 2, data parallel 4; 1.3B model as in
# examples/pretrain_gpt_1b.sh. SAVE must be on a filesystem every node sees (checkpoints are per-rank shards,
# committed by rank 0). Requeue-safe: --load resumes from SAVE/latest (bitwise on the same layout).
#
#   DATA_PATH=/data/pile_text_document TOKENIZER_MODEL=/data/tok.model TOKEN_FILTER=remove \
#     sbatch examples/slurm_pretrain_gpt.sh
# TOKEN_FILTER: none | mask | remove | document. DeepSpeed ZeRO instead of DDP: add
#   --deepspeed --deepspeed_config examples/ds_config_zero1.json to EXTRA_ARGS.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"

: "${DATA_PATH:?set DATA_PATH}"
: "${TOKENIZER_MODEL:?set TOKENIZER_MODEL}"
TOKEN_FILTER="${TOKEN_FILTER:-none}"
FORGET_THRESHOLD="${FORGET_THRESHOLD:-0.5}"
DOC_THRESHOLD="${DOC_THRESHOLD:-0.05}"
TRAIN_TOKENS="${TRAIN_TOKENS:-26000000000}"
SAVE="${SAVE:-runs/gpt_1b_${TOKEN_FILTER}_${SLURM_NNODES:-1}n}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export MASTER_ADDR MASTER_PORT="${MASTER_PORT:-29500}" CUDA_DEVICE_MAX_CONNECTIONS=1 OMP_NUM_THREADS=8

FILTER_ARGS="--token-filter $TOKEN_FILTER --forget-threshold $FORGET_THRESHOLD"
[[ "$TOKEN_FILTER" == document ]] && FILTER_ARGS+=" --document-threshold $DOC_THRESHOLD"

srun --kill-on-bad-exit=1 torchrun --nnodes "$SLURM_NNODES" --nproc_per_node 8 --rdzv_id "$SLURM_JOB_ID" \
  --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
  pretrain_gpt.py \
  --tensor-model-parallel-size 4 --pipeline-model-parallel-size 2 --sequence-parallel \
  --num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length 2048 \
  --micro-batch-size 4 --global-batch-size 512 --train-tokens "$TRAIN_TOKENS" \
  --lr 3e-4 --min-lr 3e-5 --lr-warmup-iters 2000 --lr-decay-style cosine --weight-decay 0.1 --clip-grad 1.0 \
  --adam-beta2 0.95 --bf16 --tokenizer-type SentencePieceTokenizer --tokenizer-model "$TOKENIZER_MODEL" \
  --data-path $DATA_PATH --split 969,30,1 --num-workers 2 $FILTER_ARGS \
  --save "$SAVE" --load "$SAVE" --save-interval 1000 --eval-interval 1000 --eval-iters 20 --log-interval 10 \
  --distributed-timeout-minutes 30 --seed 1234 $EXTRA_ARGS
