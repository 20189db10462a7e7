#!/usr/bin/env bash
# The prepared GPU check of the trainer, in one device call (about 110 s on an H100; cap DEADLINE_S=150):
#   1. (optional, BUILD_EXT=1 default) build megatron_tf._C for the fused one-pass cross-entropy
#      (setup.py build_ext --inplace, MAX_JOBS=16, sm_90; ~48 s measured); a failed build falls back to torch's path,
#   2. a 3-step end-to-end smoke run of pretrain_gpt.py (tiny GPT, bf16, mask filter, synthetic data, checkpoint),
#   3. benchmarks/bench_train.py --sizes 1b --bf16: MFU of a 1.34B GPT (24 layers, hidden 2048, 16 heads, SwiGLU,
#      seq 2048, vocab 32000, micro batch 4, global batch 16) and the step time of mask / remove vs none,
#      -> $OUT/train_bench.json.
# No network, no deepspeed needed; the data is synthetic (generated here). Outputs under $OUT: log.txt, build.txt,
# smoke/ (metrics.jsonl), train_bench.json.
#
#   run(command="bash benchmarks/gpu/run_train_check.sh", timeout_s=200)
#   bash benchmarks/gpu/run_train_check.sh --dry-run        # CPU rehearsal (tiny size, no build), ~15 s
set -u -o pipefail
OUT="${OUT:-/tmp/train_check}"
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONWARNINGS=ignore
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEADLINE_S="${DEADLINE_S:-150}"
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
BUILD_EXT="${BUILD_EXT:-$((1 - DRY))}"

left() {  # seconds for a step: min(cap, time to the deadline), at least 1
  local cap=$1 rest=$((DEADLINE_S - SECONDS))
  ((rest < 1)) && rest=1
  echo $((cap < rest ? cap : rest))
}

main() {
  echo "== machine"
  if ((DRY == 0)); then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  fi
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

  if ((BUILD_EXT == 1)); then
    echo "== build (fused cross-entropy extension)"
    local t0=$SECONDS
    MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 timeout "$(left 75)" python3 setup.py build_ext --inplace \
      >"$OUT/build.txt" 2>&1
    echo "build rc=$? in $((SECONDS - t0)) s"
    tail -2 "$OUT/build.txt"
  fi
  python3 -c 'from megatron_tf.ops import cross_entropy as fused_ce
print("fused cross-entropy available:", fused_ce.fused_available(), fused_ce.extension_error() or "")'

  echo "== smoke: pretrain_gpt.py, 3 steps"
  local t0=$SECONDS dev=cuda
  ((DRY == 1)) && dev=cpu
  rm -rf "$OUT/smoke" "$OUT/smoke_data"
  mkdir -p "$OUT/smoke_data"
  timeout "$(left 40)" python3 - "$OUT/smoke_data" <<'EOF'
import sys
from benchmarks.bench_train import make_data
print("data:", make_data(sys.argv[1], 1024, 200_000))
EOF
  timeout "$(left 40)" python3 pretrain_gpt.py --num-layers 2 --hidden-size 128 --num-attention-heads 4 \
    --seq-length 256 --micro-batch-size 4 --global-batch-size 8 --train-iters 3 --lr 1e-3 --bf16 --device "$dev" \
    --tokenizer-type NullTokenizer --vocab-size 1024 --data-path "$OUT/smoke_data/bench" --split 98,2,0 \
    --token-filter mask --forget-threshold 0.5 --log-interval 1 --eval-iters 1 --eval-interval 3 \
    --save "$OUT/smoke" --num-workers 2 --no-progress-bar 2>&1 | grep -vE "^\[..:..:..\]" | tail -6
  echo "smoke rc=$? in $((SECONDS - t0)) s; checkpoint: $(cat "$OUT/smoke/latest" 2>/dev/null)"

  echo "== bench"
  t0=$SECONDS
  if ((DRY == 1)); then
    timeout "$(left 60)" python3 benchmarks/bench_train.py --dry-run --device cpu --out "$OUT/train_bench.json"
  else
    timeout "$(left 120)" python3 benchmarks/bench_train.py --sizes 1b --bf16 --steps 6 --warmup 2 --rounds 2 \
      --num-workers 2 --out "$OUT/train_bench.json"
  fi
  local rc=$?
  echo "bench rc=$rc in $((SECONDS - t0)) s"
  echo "== total $SECONDS s"
  return "$rc"
}

main 2>&1 | tee "$OUT/log.txt"
