#!/usr/bin/env bash
# The prepared GPU check of the fused cross-entropy, in one device call (about 4 minutes on an H100):
#   1. build megatron_tf._C against the machine's torch (setup.py build_ext --inplace, ninja, MAX_JOBS=16, sm_90),
#   2. the CUDA tests against float64 (pytest tests/ops -k cuda; CUDA-graph capture proves no host sync),
#   3. the benchmark (benchmarks/bench_cross_entropy.py -> $OUT/cross_entropy_bench.json),
#   4. if time is left, compute-sanitizer memcheck over the small CUDA tests (no caching allocator, so an
#      out-of-bounds access of any tensor is seen).
# Liger-Kernel is installed from .whl/ when carried (see the device README). Outputs under $OUT: log.txt, build.txt,
# pytest.xml, cross_entropy_bench.json, sanitizer.txt. Each step has a cap and the whole script a deadline
# (DEADLINE_S).
#
#   run(command="bash benchmarks/gpu/run_cross_entropy_check.sh", carry=[".whl"], timeout_s=360)
set -u -o pipefail
OUT="${OUT:-/tmp/cross_entropy_check}"
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
DEADLINE_S="${DEADLINE_S:-330}"

left() {  # seconds for a step: min(cap, time to the deadline), at least 1
  local cap=$1 rest=$((DEADLINE_S - SECONDS))
  ((rest < 1)) && rest=1
  echo $((cap < rest ? cap : rest))
}

main() {
  echo "== machine"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'
  nvcc --version | tail -1
  if ls .whl/liger_kernel-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/liger_kernel-*.whl && export PYTHONPATH="/tmp/site"
  fi
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

  echo "== build"
  local t0=$SECONDS
  MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 timeout "$(left 170)" python3 setup.py build_ext --inplace >"$OUT/build.txt" 2>&1
  local rc_build=$?
  echo "build rc=$rc_build in $((SECONDS - t0)) s"
  grep -iE "error|warning: |ptxas" "$OUT/build.txt" | head -30
  tail -3 "$OUT/build.txt"
  python3 -c 'from megatron_tf.ops import cross_entropy as fused_ce
print("fused available:", fused_ce.fused_available(), fused_ce.extension_error())'

  echo "== tests"
  t0=$SECONDS
  timeout "$(left 110)" python3 -m pytest -q -p no:cacheprovider -rfE --tb=line --maxfail=40 -k cuda tests/ops \
    --junitxml="$OUT/pytest.xml"
  local rc_tests=$?
  echo "tests rc=$rc_tests in $((SECONDS - t0)) s"

  echo "== bench"
  t0=$SECONDS
  timeout "$(left 150)" python3 benchmarks/bench_cross_entropy.py --out "$OUT/cross_entropy_bench.json"
  echo "bench rc=$? in $((SECONDS - t0)) s"

  if ((DEADLINE_S - SECONDS > 40)) && command -v compute-sanitizer >/dev/null; then
    echo "== compute-sanitizer memcheck (small CUDA tests)"
    t0=$SECONDS
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$(left 90)" compute-sanitizer --tool memcheck --error-exitcode 9 \
      python3 -m pytest -q -p no:cacheprovider --tb=line -k "cuda and (misaligned or tp2-bfloat16-N7 or V1000-m0.3)" \
      tests/ops/test_cross_entropy_cuda.py >"$OUT/sanitizer.txt" 2>&1
    echo "sanitizer rc=$? in $((SECONDS - t0)) s"
    grep -E "ERROR SUMMARY|passed|failed|Invalid" "$OUT/sanitizer.txt" | head -10
  fi
  echo "== total $SECONDS s (build rc=$rc_build, tests rc=$rc_tests)"
  return "$rc_tests"
}

main 2>&1 | tee "$OUT/log.txt"
