#!/usr/bin/env bash
#SBATCH --job-name=annotate
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=%x-%j.out
# Annotate one dataset across nodes (docs/annotation.md): one torchrun per node (srun), rendezvous on the first node,
# NPROC_PER_NODE ranks per node (one per GPU for the classifier / SAE labelers; one per core for the blocklist).
# Each rank labels its share of the chunks into ${DATA_PREFIX}.${NAME}.annotate-work/, which must be on a
# filesystem every node sees; rank 0 merges them into the sidecars (byte-identical to a one-process run).
# Relaunching the same command (or a requeue: same job id, so the same --rdzv-id and lock owner) resumes: finished
# chunks are kept, not relabeled. A rank that dies fails the job within DIST_TIMEOUT s; a node that never joins
# fails torchrun's rendezvous after JOIN_TIMEOUT s.
#
#   DATA_PREFIX=/data/pile_text_document TOKENIZER_MODEL=/data/tok.model LABELER=classifier CLASSIFIER=/ckpt/cls \
#     sbatch examples/slurm_annotate.sh
#   DATA_PREFIX=... TOKENIZER_MODEL=... LABELER=blocklist TERMS=data/demo/medical_terms.txt NPROC_PER_NODE=32 \
#     sbatch --gpus-per-node=0 examples/slurm_annotate.sh
#   LABELER=sae: set SAE_ARGS="--sae-reference-lm LM_DIR --sae SAE_DIR --sae-latents latents.json"
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"

: "${DATA_PREFIX:?set DATA_PREFIX (the dataset prefix P of P.bin / P.idx)}"
: "${TOKENIZER_MODEL:?set TOKENIZER_MODEL}"
TOKENIZER_TYPE="${TOKENIZER_TYPE:-SentencePieceTokenizer}"
LABELER="${LABELER:-classifier}"
NAME="${NAME:-forget}"
NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
CHUNK_DOCS="${CHUNK_DOCS:-1024}"
DIST_TIMEOUT="${DIST_TIMEOUT:-900}"   # s without a heartbeat before a rank is declared dead
JOIN_TIMEOUT="${JOIN_TIMEOUT:-900}"   # s torchrun waits for every node at the rendezvous
EXTRA_ARGS="${EXTRA_ARGS:-}"
case "$LABELER" in
  blocklist) LABELER_ARGS="--labeler blocklist --terms ${TERMS:?set TERMS for LABELER=blocklist}" ;;
  classifier) LABELER_ARGS="--labeler classifier --classifier ${CLASSIFIER:?set CLASSIFIER} --classifier-device cuda" ;;
  sae) LABELER_ARGS="--labeler sae ${SAE_ARGS:?set SAE_ARGS} --sae-device cuda" ;;
  *) echo "LABELER=$LABELER: expected blocklist, classifier or sae" >&2; exit 2 ;;
esac
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export MASTER_ADDR MASTER_PORT="${MASTER_PORT:-29500}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

# --kill-on-bad-exit: when one node's torchrun fails, srun stops the others at once.
srun --kill-on-bad-exit=1 torchrun --nnodes "$SLURM_NNODES" --nproc-per-node "$NPROC_PER_NODE" \
  --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" \
  --rdzv-conf "join_timeout=$JOIN_TIMEOUT" --max-restarts 0 \
  tools/annotate.py --data-prefix "$DATA_PREFIX" --name "$NAME" \
  --tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL" $LABELER_ARGS \
  --chunk-docs "$CHUNK_DOCS" --dist-timeout "$DIST_TIMEOUT" --no-progress $EXTRA_ARGS
