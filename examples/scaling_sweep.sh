#!/usr/bin/env bash
# Scaling sweep: model sizes x filtering arms (none, mask, remove, document) -> train -> evaluate -> scaling report.
#
#   examples/scaling_sweep.sh                                   # CPU: tiny sizes on the bundled demo corpus
#   SIZES=gpu NPROC=1 DATA_PREFIX=data/shared_train_text_document examples/scaling_sweep.sh
#   SIZES=gpu NPROC=8 LAUNCHER=deepspeed DS_CONFIG=examples/ds_config_zero1.json DATA_PREFIX=... examples/scaling_sweep.sh
#   TOKENS_SCALE=0.1 ARMS="none remove" examples/scaling_sweep.sh   # a quick smoke run
#   DOCUMENT_FILTER_FRACTION=0.0154 examples/scaling_sweep.sh    # document arm matched to the token arms' share
#   DRY_RUN=1 examples/scaling_sweep.sh                          # print every command, run nothing
#   FILTER_TERMS_SPLIT=1/2 EVAL_TERMS_SPLIT=2/2 MATCH_DOCUMENT=1 examples/scaling_sweep.sh   # held-out terms protocol
#
# Labels (docs/evaluation.md): with FILTER_TERMS_SPLIT=K/N the training data is labeled with part K of the blocklist
# (the filter's labels) and with EVAL_TERMS_SPLIT the evaluation labels the held-out text with another part, so the
# token-level metrics use labels the filter never saw (without them the token-level metrics are privileged: the
# evaluation marks them so and the report never headlines them). MATCH_DOCUMENT=1 sets DOCUMENT_FILTER_FRACTION to
# the share of the train split's tokens the token filters take out of the loss (tools/inspect_dataset.py --json).
#
# Every arm of a size trains on the same number of tokens, counted as TRAIN_TOKENS_COUNT: learned (default; unmasked
# targets, as the paper's code) or seen (every input token). The report prints both counts and the training FLOPs per
# arm, and its compute convention is COMPUTE (tools/scaling_report.py --compute; default paper, C = 6 * N * 20N). Killed? Run it again: training resumes from the last checkpoint (--load), finished evaluations are skipped.
# Output: $OUT/ckpt/<size>-<arm>/ (checkpoints), $OUT/evals/<size>-<arm>.json|csv, $OUT/report/report.md (+ PNGs,
# scaling.json, slowdowns.csv). Metrics and the slowdown definition: docs/evaluation.md.
#
# CPU sizes: about 15-20 minutes for 3 sizes x 4 arms on 2 cores (measured: 2 layers x 64 wide trains at ~11k
# tokens/s there). GPU sizes are a starting point for ../shared/data (~29M tokens): scale train tokens with the model
# (about 20 tokens per non-embedding parameter, Hoffmann et al. 2022) and check the loss curves.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-cpu}                       # cpu | gpu | a file with lines "name layers hidden heads seq mbs gbs tokens lr"
ARMS=${ARMS:-"none mask remove document"}
OUT=${OUT:-runs/scaling_sweep}
LAUNCHER=${LAUNCHER:-torchrun}            # torchrun | deepspeed | python (one process, no launcher)
NPROC=${NPROC:-1}                         # processes (GPUs) per run
DS_CONFIG=${DS_CONFIG:-examples/ds_config_zero1.json}
TP=${TP:-1}
PP=${PP:-1}
TOKENS_SCALE=${TOKENS_SCALE:-1}           # multiplies every size's token budget
TOKENIZER_TYPE=${TOKENIZER_TYPE:-SentencePieceTokenizer}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-data/demo/tokenizer/demo_sp.model}
TERMS=${TERMS:-data/demo/medical_terms.txt}
DATA_PREFIX=${DATA_PREFIX:-}              # preprocessed AND annotated training prefix; empty: build from data/demo
FORGET_THRESHOLD=${FORGET_THRESHOLD:-0.5}
# --token-filter document drops documents whose mean token score >= DOCUMENT_THRESHOLD. With the demo blocklist,
# 0.02 drops 78% of the medical and 22% of the biology training documents (and no general one); tune it for yours.
DOCUMENT_THRESHOLD=${DOCUMENT_THRESHOLD:-0.02}
DOCUMENT_SCORE_COLUMN=${DOCUMENT_SCORE_COLUMN:-mean_score}
# Set DOCUMENT_FILTER_FRACTION=F to drop the documents that make up ~F of the train split's tokens instead of using a
# fixed threshold (--document-filter-fraction; match it to the token arms' filtered share for a fair baseline).
DOCUMENT_FILTER_FRACTION=${DOCUMENT_FILTER_FRACTION:-}
MATCH_DOCUMENT=${MATCH_DOCUMENT:-0}
FILTER_TERMS_SPLIT=${FILTER_TERMS_SPLIT:-}  # K/N: training labels from part K of the blocklist (empty: all terms)
EVAL_TERMS_SPLIT=${EVAL_TERMS_SPLIT:-}      # K/N: evaluation labels from part K (use another part than the filter's)
TRAIN_TOKENS_COUNT=${TRAIN_TOKENS_COUNT:-learned}
COMPUTE=${COMPUTE:-paper}
DRY_RUN=${DRY_RUN:-0}                     # 1: print the commands (shell-quoted), run nothing
HELDOUT_FORGET=${HELDOUT_FORGET:-data/demo/heldout/medical.jsonl.xz}
HELDOUT_RETAIN=${HELDOUT_RETAIN:-data/demo/heldout/biology.jsonl.xz}
HELDOUT_GENERAL=${HELDOUT_GENERAL:-data/demo/heldout/general.jsonl.xz}
EVAL_MMLU=${EVAL_MMLU:-data/demo/eval/mmlu.jsonl.xz}
EVAL_MEDQA=${EVAL_MEDQA:-data/demo/eval/medqa.jsonl.xz}
EVAL_MEDMCQA=${EVAL_MEDMCQA:-data/demo/eval/medmcqa.jsonl.xz}
EVAL_LIMIT=${EVAL_LIMIT:-}                # at most this many documents / questions per eval set
PYTHON=${PYTHON:-python}

#        name layers hidden heads seq  mbs gbs train_tokens lr
CPU_SIZES="
t1       2      64     4     256  16  16  250000       3e-3
t2       2      96     4     256  16  16  500000       3e-3
t3       3      128    4     256  16  16  1000000      2e-3
"
GPU_SIZES="
s1       4      256    4     1024 16  64  20000000     1e-3
s2       6      384    6     1024 16  64  40000000     1e-3
s3       8      512    8     1024 16  64  80000000     6e-4
s4       12     768    12    1024 16  64  160000000    6e-4
"
case "$SIZES" in
  cpu) TABLE=$CPU_SIZES ;;
  gpu) TABLE=$GPU_SIZES ;;
  *) TABLE=$(cat "$SIZES") ;;
esac

# shellcheck source=examples/lib/launch.sh
source examples/lib/launch.sh  # run, launch

[ "$DRY_RUN" = 1 ] || mkdir -p "$OUT"
if [ -z "$DATA_PREFIX" ]; then  # the bundled demo corpus: tokenize, then label with the blocklist
  DATA_PREFIX=$OUT/data/demo_train_text_document
  if [ ! -f "$DATA_PREFIX.forget.tokscores" ]; then
    run "$PYTHON" tools/preprocess_data.py --input data/demo/train/medical.jsonl.xz data/demo/train/biology.jsonl.xz \
      data/demo/train/general.jsonl.xz --output-prefix "$OUT/data/demo_train" --tokenizer-type "$TOKENIZER_TYPE" \
      --tokenizer-model "$TOKENIZER_MODEL" --json-keys text --append-eod --workers 2
    run "$PYTHON" tools/annotate.py --data-prefix "$DATA_PREFIX" --labeler blocklist --terms "$TERMS" \
      ${FILTER_TERMS_SPLIT:+--terms-split "$FILTER_TERMS_SPLIT"} \
      --tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL" \
      --write-mask-threshold "$FORGET_THRESHOLD" --no-progress
  fi
fi
if [ "$MATCH_DOCUMENT" = 1 ] && [ -z "$DOCUMENT_FILTER_FRACTION" ]; then
  if [ "$DRY_RUN" = 1 ]; then
    DOCUMENT_FILTER_FRACTION='<token-share>'
  else
    DOCUMENT_FILTER_FRACTION=$("$PYTHON" tools/inspect_dataset.py --data-path "$DATA_PREFIX" --split 98,2,0 \
      --seq-length 256 --train-samples 1 --token-filter mask --forget-threshold "$FORGET_THRESHOLD" \
      --tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL" --json \
      | "$PYTHON" -c 'import json, sys; print("%.6g" % json.load(sys.stdin)["tokens_filtered_fraction"])')
  fi
  echo "document arm matched to the token filters' share: --document-filter-fraction $DOCUMENT_FILTER_FRACTION" >&2
fi

arm_flags() {
  case "$1" in
    none) echo "--token-filter none" ;;
    mask|remove) echo "--token-filter $1 --forget-threshold $FORGET_THRESHOLD" ;;
    document)
      if [ -n "$DOCUMENT_FILTER_FRACTION" ]; then
        echo "--token-filter document --document-filter-fraction $DOCUMENT_FILTER_FRACTION \
--document-score-column $DOCUMENT_SCORE_COLUMN"
      else
        echo "--token-filter document --document-threshold $DOCUMENT_THRESHOLD \
--document-score-column $DOCUMENT_SCORE_COLUMN"
      fi ;;
    *) echo "unknown arm $1" >&2; exit 2 ;;
  esac
}

EVAL_ARGS=(--forget-text "$HELDOUT_FORGET" --retain-text "$HELDOUT_RETAIN" --general-text "$HELDOUT_GENERAL"
           --blocklist "$TERMS" --forget-threshold "$FORGET_THRESHOLD"
           ${EVAL_TERMS_SPLIT:+--blocklist-terms-split "$EVAL_TERMS_SPLIT"}
           --mmlu "$EVAL_MMLU" --medqa "$EVAL_MEDQA" --medmcqa "$EVAL_MEDMCQA")
[ -n "$EVAL_LIMIT" ] && EVAL_ARGS+=(--limit "$EVAL_LIMIT")

while read -r name layers hidden heads seq mbs gbs tokens lr; do
  [ -z "${name:-}" ] && continue
  case "$name" in \#*) continue ;; esac
  budget=$(awk -v t="$tokens" -v s="$TOKENS_SCALE" 'BEGIN { printf "%d", t * s }')
  for arm in $ARMS; do
    run_name=$name-$arm
    ckpt=$OUT/ckpt/$run_name
    echo "=== $run_name: ${layers} layers x ${hidden}, ${budget} tokens ($TRAIN_TOKENS_COUNT) ===" >&2
    # shellcheck disable=SC2046
    launch --num-layers "$layers" --hidden-size "$hidden" --num-attention-heads "$heads" \
      --seq-length "$seq" --micro-batch-size "$mbs" --global-batch-size "$gbs" --train-tokens "$budget" \
      --train-tokens-count "$TRAIN_TOKENS_COUNT" --lr "$lr" --min-lr "$(awk -v l="$lr" 'BEGIN { print l / 10 }')" --lr-warmup-fraction 0.05 \
      --lr-decay-style cosine --weight-decay 0.1 --clip-grad 1.0 \
      --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP" \
      --tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL" \
      --data-path "$DATA_PREFIX" --split 98,2,0 $(arm_flags "$arm") \
      --save "$ckpt" --load "$ckpt" --save-interval 200 --eval-interval 200 --eval-iters 5 --log-interval 20 \
      --bf16 --seed 1234
    run "$PYTHON" tools/evaluate.py --load "$ckpt" --output-dir "$OUT/evals" --run-name "$run_name" --arm "$arm" \
      --size "$name" "${EVAL_ARGS[@]}"
  done
done <<< "$TABLE"

run "$PYTHON" tools/scaling_report.py --evals "$OUT/evals/*.json" --output-dir "$OUT/report" --compute "$COMPUTE"
echo "report: $OUT/report/report.md" >&2
