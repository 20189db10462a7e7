#!/usr/bin/env bash
# Threshold sweep (issue 13 D): at one model size, train the token filters (mask, remove) and the document filter at
# several filtered shares of the training tokens, plus the unfiltered baseline -> evaluate each -> scaling report with
# the frontier (all-token forget loss vs retain loss, one curve per filter type; the paper's threshold figure).
#
#   examples/threshold_sweep.sh                                  # CPU: size t1 on the bundled demo corpus
#   FRACTIONS="0.05 0.2" FILTERS="remove document" TOKENS_SCALE=0.1 examples/threshold_sweep.sh   # quick smoke run
#   SIZE="s2 6 384 6 1024 16 64 40000000 1e-3" NPROC=1 DATA_PREFIX=data/shared_train_text_document \
#       examples/threshold_sweep.sh                              # a GPU size
#   DRY_RUN=1 examples/threshold_sweep.sh                        # print every command, run nothing
#
# Share F: mask / remove get `--token-filter-fraction F` for F in TOKEN_FRACTIONS (the trainer picks the forget
# threshold that flags about F of the train split's tokens), document gets `--document-filter-fraction F` for F in
# FRACTIONS (the document threshold that drops about F of the train split's tokens); both are resolved when the
# dataset is built and logged with the chosen threshold (pretrain_gpt.py --help). Runs are named <size>-<filter>-f<F>
# (the report reads the nominal share from that suffix when the evaluation does not record the achieved
# `tokens_filtered_fraction`).
# Token shares need GRADED token scores (LABELER=classifier with CLASSIFIER=<dir from tools/train_classifier.py>, or a
# DATA_PREFIX annotated by the classifier or the SAE labeler). The blocklist scores are 0/1, so it has exactly one
# token operating point (the labelled share: 2.18% of the demo corpus's train split, measured) and the trainer refuses other shares: with
# LABELER=blocklist (the default) TOKEN_FRACTIONS defaults to empty and mask / remove run once at --forget-threshold
# (run <size>-<filter>-labels); the document filter still sweeps FRACTIONS, since document scores are graded.
# Every run of the size trains on the same number of tokens, counted as TRAIN_TOKENS_COUNT (learned: unmasked targets,
# as the paper's code; seen: every input token). Killed? Run it again: training resumes from the last checkpoint
# (--load) and finished evaluations are skipped.
# Output: $OUT/ckpt/<run>/, $OUT/evals/<run>.json, $OUT/report/report.md (+ frontier.png, frontier.csv).
# One size gives no scaling fit (the report says so); the frontier and the loss tables do not need one.
#
# CPU cost: size t1 trains at roughly 25 s per run on 2 cores at TOKENS_SCALE=1 (250k tokens at examples/
# scaling_sweep.sh's measured ~11k tokens/s for 2 x 64); with the blocklist 1 + 2 + 5 runs, with a graded labeler
# 1 + 3 x 5, plus an evaluation each.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=${SIZE:-"t1 2 64 4 256 16 16 250000 3e-3"}  # name layers hidden heads seq mbs gbs train_tokens lr
FRACTIONS=${FRACTIONS:-"0.02 0.05 0.1 0.2 0.4"}
LABELER=${LABELER:-blocklist}             # blocklist | classifier: how the demo corpus is annotated (no DATA_PREFIX)
CLASSIFIER=${CLASSIFIER:-}                # LABELER=classifier: the classifier artifact directory
if [ "$LABELER" = blocklist ]; then TOKEN_FRACTIONS=${TOKEN_FRACTIONS-}; else TOKEN_FRACTIONS=${TOKEN_FRACTIONS-$FRACTIONS}; fi
FILTERS=${FILTERS:-"mask remove document"}
OUT=${OUT:-runs/threshold_sweep}
DRY_RUN=${DRY_RUN:-0}                     # 1: print the commands (shell-quoted), run nothing
LAUNCHER=${LAUNCHER:-torchrun}            # torchrun | deepspeed | python (one process, no launcher)
NPROC=${NPROC:-1}
DS_CONFIG=${DS_CONFIG:-examples/ds_config_zero1.json}
TP=${TP:-1}
PP=${PP:-1}
TOKENS_SCALE=${TOKENS_SCALE:-1}
TRAIN_TOKENS_COUNT=${TRAIN_TOKENS_COUNT:-learned}
TOKENIZER_TYPE=${TOKENIZER_TYPE:-SentencePieceTokenizer}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-data/demo/tokenizer/demo_sp.model}
TERMS=${TERMS:-data/demo/medical_terms.txt}
DATA_PREFIX=${DATA_PREFIX:-}              # preprocessed AND annotated training prefix; empty: build from data/demo
FORGET_THRESHOLD=${FORGET_THRESHOLD:-0.5} # the labels' threshold for the evaluation's token-level metrics
DOCUMENT_SCORE_COLUMN=${DOCUMENT_SCORE_COLUMN:-mean_score}
EVAL_LABELS=${EVAL_LABELS:-}              # annotation for token-level metrics (tools/evaluate.py --eval-labels)
HELDOUT_FORGET=${HELDOUT_FORGET:-data/demo/heldout/medical.jsonl.xz}
HELDOUT_RETAIN=${HELDOUT_RETAIN:-data/demo/heldout/biology.jsonl.xz}
HELDOUT_GENERAL=${HELDOUT_GENERAL:-data/demo/heldout/general.jsonl.xz}
EVAL_LIMIT=${EVAL_LIMIT:-}                # at most this many documents per eval set
COMPUTE=${COMPUTE:-paper}                 # tools/scaling_report.py --compute
PYTHON=${PYTHON:-python}

# shellcheck source=examples/lib/launch.sh
source examples/lib/launch.sh  # run, launch

case "$LABELER" in
  blocklist) ;;
  classifier) [ -n "$CLASSIFIER" ] || [ -n "$DATA_PREFIX" ] || {
    echo "threshold_sweep.sh: LABELER=classifier needs CLASSIFIER=<classifier directory>" >&2; exit 2; } ;;
  *) echo "threshold_sweep.sh: LABELER takes blocklist or classifier; found '$LABELER'" >&2; exit 2 ;;
esac
for f in $FRACTIONS $TOKEN_FRACTIONS; do  # (0, 1), as --*-filter-fraction requires
  awk -v f="$f" 'BEGIN { exit !(f + 0 > 0 && f + 0 < 1) }' || {
    echo "threshold_sweep.sh: FRACTIONS must lie in (0, 1), found '$f'" >&2; exit 2; }
done
for filter in $FILTERS; do
  case "$filter" in mask|remove|document) ;; *)
    echo "threshold_sweep.sh: FILTERS takes mask, remove, document; found '$filter'" >&2; exit 2 ;;
  esac
done
read -r name layers hidden heads seq mbs gbs tokens lr <<< "$SIZE"
[ -n "${lr:-}" ] || { echo "threshold_sweep.sh: SIZE needs 9 fields (name layers hidden heads seq mbs gbs" \
  "train_tokens lr), found '$SIZE'" >&2; exit 2; }

[ "$DRY_RUN" = 1 ] || mkdir -p "$OUT"
if [ -z "$DATA_PREFIX" ]; then  # the bundled demo corpus: tokenize, then label with the blocklist
  DATA_PREFIX=$OUT/data/demo_train_text_document
  if [ ! -f "$DATA_PREFIX.forget.tokscores" ]; then
    run "$PYTHON" tools/preprocess_data.py --input data/demo/train/medical.jsonl.xz \
      data/demo/train/biology.jsonl.xz data/demo/train/general.jsonl.xz --output-prefix "$OUT/data/demo_train" \
      --tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL" --json-keys text --append-eod \
      --workers 2
    if [ "$LABELER" = classifier ]; then
      label_args=(--labeler classifier --classifier "$CLASSIFIER")
    else
      label_args=(--labeler blocklist --terms "$TERMS")
    fi
    run "$PYTHON" tools/annotate.py --data-prefix "$DATA_PREFIX" "${label_args[@]}" \
      --tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL" \
      --write-mask-threshold "$FORGET_THRESHOLD" --no-progress
  fi
fi

EVAL_ARGS=(--forget-text "$HELDOUT_FORGET" --retain-text "$HELDOUT_RETAIN" --general-text "$HELDOUT_GENERAL"
           --blocklist "$TERMS" --forget-threshold "$FORGET_THRESHOLD")
[ -n "$EVAL_LIMIT" ] && EVAL_ARGS+=(--limit "$EVAL_LIMIT")
[ -n "$EVAL_LABELS" ] && EVAL_ARGS+=(--eval-labels "$EVAL_LABELS")
budget=$(awk -v t="$tokens" -v s="$TOKENS_SCALE" 'BEGIN { printf "%d", t * s }')
min_lr=$(awk -v l="$lr" 'BEGIN { print l / 10 }')

train_and_eval() {  # run-name arm filter-flags...
  local run_name=$1 arm=$2
  shift 2
  local ckpt=$OUT/ckpt/$run_name
  echo "=== $run_name: ${layers} layers x ${hidden}, ${budget} tokens ($TRAIN_TOKENS_COUNT) ===" >&2
  launch --num-layers "$layers" --hidden-size "$hidden" --num-attention-heads "$heads" \
    --seq-length "$seq" --micro-batch-size "$mbs" --global-batch-size "$gbs" --train-tokens "$budget" \
    --train-tokens-count "$TRAIN_TOKENS_COUNT" --lr "$lr" --min-lr "$min_lr" --lr-warmup-fraction 0.05 \
    --lr-decay-style cosine --weight-decay 0.1 --clip-grad 1.0 \
    --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP" \
    --tokenizer-type "$TOKENIZER_TYPE" --tokenizer-model "$TOKENIZER_MODEL" \
    --data-path "$DATA_PREFIX" --split 98,2,0 "$@" \
    --save "$ckpt" --load "$ckpt" --save-interval 200 --eval-interval 200 --eval-iters 5 --log-interval 20 \
    --bf16 --seed 1234
  run "$PYTHON" tools/evaluate.py --load "$ckpt" --output-dir "$OUT/evals" --run-name "$run_name" --arm "$arm" \
    --size "$name" "${EVAL_ARGS[@]}"
}

train_and_eval "$name-none" none --token-filter none
for filter in $FILTERS; do
  case "$filter" in
    mask|remove)
      if [ -z "$TOKEN_FRACTIONS" ]; then  # binary labels: the one operating point they have
        train_and_eval "$name-$filter-labels" "$filter" --token-filter "$filter" --forget-threshold "$FORGET_THRESHOLD"
      fi
      for f in $TOKEN_FRACTIONS; do
        train_and_eval "$name-$filter-f$f" "$filter" --token-filter "$filter" --token-filter-fraction "$f"
      done ;;
    document)
      for f in $FRACTIONS; do
        train_and_eval "$name-document-f$f" document --token-filter document \
          --document-filter-fraction "$f" --document-score-column "$DOCUMENT_SCORE_COLUMN"
      done ;;
  esac
done

run "$PYTHON" tools/scaling_report.py --evals "$OUT/evals/*.json" --output-dir "$OUT/report" --compute "$COMPUTE"
echo "report: $OUT/report/report.md (frontier: $OUT/report/frontier.png)" >&2
