#!/usr/bin/env bash
# Attack none, mask, remove, document and the RMU model with the same sweep and write ONE comparison table:
#   1. the demo checkpoints (python tools/demo.py, if missing)
#   2. RMU on the `none` checkpoint (examples/rmu.sh -> $RMU_OUT/ckpt)
#   3. examples/attack_finetune.sh over all five models -> $OUT/table.md (+ results.json/csv, curves_best.png)
#
#   bash examples/attack_all.sh                                      # tiny CPU demo (tens of minutes on 2 cores)
#   CKPT_ROOT=ckpt RMU_OUT=runs/rmu_1b OUT=runs/attack_all_1b LRS="1e-5 1e-4 1e-3" SEEDS="1 2 3" ITERS=500 \
#     bash examples/attack_all.sh                                    # a GPU-sized run (set the RMU_* and sizes too)
# Every stage resumes (finished RMU job and finished attack runs are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

CKPT_ROOT="${CKPT_ROOT:-runs/demo/ckpt}"
RMU_OUT="${RMU_OUT:-runs/rmu}"
OUT="${OUT:-runs/attack_all}"
ARMS="${ARMS:-none mask remove document}"

if [[ "$CKPT_ROOT" == runs/demo/ckpt ]]; then
  for arm in $ARMS; do [[ -f "$CKPT_ROOT/$arm/latest" ]] || { python tools/demo.py; break; }; done
fi
LOAD="$CKPT_ROOT/none" OUT="$RMU_OUT" bash examples/rmu.sh
models=""
for arm in $ARMS; do models+="$arm=$CKPT_ROOT/$arm "; done
models+="rmu=$RMU_OUT/ckpt"
MODELS="$models" BASELINE=none OUT="$OUT" bash examples/attack_finetune.sh
echo "comparison table: $OUT/table.md"
cat "$OUT/table.md"
