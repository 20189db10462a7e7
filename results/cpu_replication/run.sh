#!/usr/bin/env bash
# CPU replication on ../shared/data (the smallest version that fits a 2-core session): 3 tiny sizes x 4 arms,
# held-out-terms protocol (issue 13): the training data is labeled with blocklist half 1/2 (the filter's labels), the
# held-out text with half 2/2 (the token-level evaluation's labels); the document arm drops the same share of
# training tokens as the token filters take out of the loss (MATCH_DOCUMENT=1).
#   TOKENS_SCALE=0.6 bash results/cpu_replication/run.sh    # what was run (see README.md); resumable
# Output: runs/cpu_replication/{ckpt,evals,report}; the committed copy of the report and raw JSON lives beside this.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${SHARED:-../shared/data}
OUT=${OUT:-runs/cpu_replication}
SPLITS=$OUT/splits
TOK=data/demo/tokenizer/demo_sp.model
mkdir -p "$OUT/data"
[ -f "$SPLITS/heldout_general.jsonl.xz" ] || python results/cpu_replication/make_splits.py --shared "$SHARED" --out "$SPLITS"
PREFIX=$OUT/data/shared_train_text_document
if [ ! -f "$PREFIX.forget.tokscores" ]; then
  python tools/preprocess_data.py --input "$SPLITS"/train_{medical,biology,general}.jsonl.xz \
    --output-prefix "$OUT/data/shared_train" --tokenizer-type SentencePieceTokenizer --tokenizer-model "$TOK" \
    --json-keys text --append-eod --workers 2
  python tools/annotate.py --data-prefix "$PREFIX" --labeler blocklist --terms data/demo/medical_terms.txt \
    --terms-split 1/2 --tokenizer-type SentencePieceTokenizer --tokenizer-model "$TOK" --write-mask-threshold 0.5 \
    --no-progress
fi
OUT=$OUT DATA_PREFIX=$PREFIX LAUNCHER=python SIZES=cpu EVAL_LIMIT=${EVAL_LIMIT:-300} \
  HELDOUT_FORGET=$SPLITS/heldout_medical.jsonl.xz HELDOUT_RETAIN=$SPLITS/heldout_biology.jsonl.xz \
  HELDOUT_GENERAL=$SPLITS/heldout_general.jsonl.xz FILTER_TERMS_SPLIT=1/2 EVAL_TERMS_SPLIT=2/2 MATCH_DOCUMENT=1 \
  DOCUMENT_SCORE_COLUMN=mean_score bash examples/scaling_sweep.sh
