#!/usr/bin/env bash
# CPU replication on ../shared/data (the smallest version that fits a 2-core session): 3 tiny sizes x 4 arms.
#   TOKENS_SCALE=0.6 bash results/cpu_replication/run.sh    # what was run: ~60 min on 2 shared cores; resumable
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
    --tokenizer-type SentencePieceTokenizer --tokenizer-model "$TOK" --write-mask-threshold 0.5 --no-progress
fi
OUT=$OUT DATA_PREFIX=$PREFIX LAUNCHER=python SIZES=cpu EVAL_LIMIT=${EVAL_LIMIT:-300} \
  HELDOUT_FORGET=$SPLITS/heldout_medical.jsonl.xz HELDOUT_RETAIN=$SPLITS/heldout_biology.jsonl.xz \
  HELDOUT_GENERAL=$SPLITS/heldout_general.jsonl.xz DOCUMENT_THRESHOLD=${DOCUMENT_THRESHOLD:-0.02} \
  bash examples/scaling_sweep.sh
