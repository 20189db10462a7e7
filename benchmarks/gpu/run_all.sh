#!/usr/bin/env bash
# The owed GPU measurements of issue 17 in ONE device call (deadline DEADLINE_S, default 540 s). docs/performance.md,
# "Owed GPU run", says what each step measures and how to read the results. Steps, in priority order:
#   env        machine.json (device, driver, torch/CUDA, commit, date, L2 size, SDPA backends), nvidia-smi
#   build      megatron_tf._C (pip install --no-build-isolation --no-deps --no-index -e ., MAX_JOBS=16, sm_90;
#              falls back to setup.py build_ext --inplace) and, in parallel, the fused-linear kernel library (nvcc)
#   tests      pytest tests/ops -k cuda (masked cross-entropy kernels and fused-linear kernels against float64,
#              graph capture)
#   flce       benchmarks/bench_fused_linear_cross_entropy.py: N=16384 H=2048 V=128256 bf16 fwd+bwd, 0 / 30% masked,
#              memory, CCE and Liger when importable                         -> fused_linear_cross_entropy.json
#   train      benchmarks/bench_train.py --sizes 1b --bf16: 3 runs x 30 timed steps per filter (none, mask,
#              remove), full and causal attention MFU, overhead CIs                    -> train_bench.json
#   annotate   benchmarks/bench_annotate.py --sizes 56m,112m on cuda (bf16): 112M / 224M biLM tokens/s
#   cross_entropy  benchmarks/bench_cross_entropy.py --vocab 128256: p20/p80 spread  -> cross_entropy_bench.json
#   sanitizer  compute-sanitizer memcheck over small fused-linear kernel tests           -> sanitizer.log
#   replication examples/scaling_sweep.sh (REPL_SIZES=cpu: 3 sizes x 4 arms on the bundled demo corpus, or
#              REPL_SIZES=gpu with REPL_DATA_PREFIX) in the time left                  -> replication/report
# Every step has a cap and is skipped (recorded as such) when the deadline leaves too little time. Results:
# $OUT/summary.json (per step: status, rc, seconds), one log per step, the JSONs above.
#
#   run(command="MEGATRON_TF_COMMIT=<sha> bash benchmarks/gpu/run_all.sh", carry=[".whl"], timeout_s=590)
#   PARTS=train,replication bash benchmarks/gpu/run_all.sh      # a subset
#   bash benchmarks/gpu/run_all.sh --dry-run                    # CPU rehearsal of every step, tiny sizes (~1 min)
# The device copy of the tree has no .git: pass the commit as MEGATRON_TF_COMMIT (evaluated in the repository).
set -u -o pipefail
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
OUT="${OUT:-/tmp/run_all}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONWARNINGS=ignore
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MEGATRON_TF_CACHE="${MEGATRON_TF_CACHE:-/tmp/megatron_tf_cache}"
DEADLINE_S="${DEADLINE_S:-$((DRY ? 300 : 540))}"
PARTS="${PARTS:-env,build,tests,flce,train,annotate,cross_entropy,sanitizer,replication}"
REPL_SIZES="${REPL_SIZES:-cpu}"
REPL_DATA_PREFIX="${REPL_DATA_PREFIX:-}"
STEPS="$OUT/steps.jsonl"
: >"$STEPS"

left() {  # seconds for a step: min(cap, time to the deadline)
  local cap=$1 rest=$((DEADLINE_S - SECONDS))
  echo $((cap < rest ? cap : rest))
}

record() {  # name status rc seconds
  printf '{"step": "%s", "status": "%s", "rc": %s, "seconds": %s}\n' "$1" "$2" "$3" "$4" >>"$STEPS"
}

step() {  # step NAME CAP MIN_S CMD... : run CMD under timeout, log to $OUT/NAME.log, record the outcome
  local name=$1 cap=$2 min_s=$3
  shift 3
  if [[ ",$PARTS," != *",$name,"* ]]; then record "$name" "not selected" null 0; return 0; fi
  local budget
  budget=$(left "$cap")
  if ((budget < min_s)); then
    echo "== $name: skipped, $budget s left (needs >= $min_s)"
    record "$name" "skipped: out of time" null 0
    return 0
  fi
  echo "== $name (cap $budget s)"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$budget" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  local status=ok
  ((rc == 124 || rc == 137)) && status="timed out"
  ((rc != 0 && rc != 124 && rc != 137)) && status="failed"
  tail -n 15 "$OUT/$name.log"
  echo "== $name: $status (rc $rc) in $((SECONDS - t0)) s"
  record "$name" "$status" "$rc" "$((SECONDS - t0))"
}

py() { python3 "$@"; }

env_step() {
  if ((DRY)); then echo "dry run: no GPU queried"; else
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv
    nvcc --version | tail -1
  fi
  py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  py -c "from benchmarks.bench_common import machine_info, write_json; import sys
write_json(sys.argv[1], machine_info(sys.argv[2]))" "$OUT/machine.json" "$([[ $DRY == 1 ]] && echo cpu || echo cuda)"
  cat "$OUT/machine.json"
}

build_step() {
  if ((DRY)); then
    py -c "import megatron_tf.ops.fused_linear_cross_entropy, megatron_tf.ops.flce_cuda; print('imports ok')"
    return; fi
  # the fused-linear kernel library (nvcc, ~10 s) in the background while the extension builds
  py -c "from megatron_tf.ops import flce_cuda as f; f.load_library(); print('flce library:', f.library_error() or 'loaded')" \
    >"$OUT/build_flce.txt" 2>&1 &
  local bg=$!
  if ! MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 python3 -m pip install --no-build-isolation --no-deps --no-index -e . \
      >"$OUT/build_pip.txt" 2>&1; then
    echo "pip install -e . failed (tail below); trying setup.py build_ext --inplace"
    tail -5 "$OUT/build_pip.txt"
    MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 python3 setup.py build_ext --inplace >"$OUT/build_ext.txt" 2>&1
  fi
  wait "$bg"
  cat "$OUT/build_flce.txt"
  py -c "from megatron_tf.ops import cross_entropy as fused_ce
print('masked cross-entropy extension:', fused_ce.extension_error() or 'loaded')"
}

tests_step() {  # two processes: a sticky CUDA error in one kernel family cannot fail the other's tests
  local rc1 rc2
  py -m pytest -q -p no:cacheprovider -rfE --tb=short --maxfail=40 -k cuda tests/ops \
    --ignore=tests/ops/test_fused_linear_cross_entropy_cuda.py --junitxml="$OUT/pytest.xml"
  rc1=$?
  py -m pytest -q -p no:cacheprovider -rfE --tb=short --maxfail=40 \
    tests/ops/test_fused_linear_cross_entropy_cuda.py --junitxml="$OUT/pytest_flce.xml"
  rc2=$?
  return $((rc1 > rc2 ? rc1 : rc2))
}

sanitizer_step() {  # compute-sanitizer memcheck over small fused-linear cases (caching allocator off)
  if ((DRY)) || ! command -v compute-sanitizer >/dev/null; then echo "compute-sanitizer: not run (dry run or absent)"
    return 0; fi
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q \
    -p no:cacheprovider --tb=line -k "N7- or N300- or unaligned or tp2" \
    tests/ops/test_fused_linear_cross_entropy_cuda.py
}

flce_step() {
  if ((DRY)); then
    py benchmarks/bench_fused_linear_cross_entropy.py --dry-run --out "$OUT/fused_linear_cross_entropy.json"
  else py benchmarks/bench_fused_linear_cross_entropy.py --out "$OUT/fused_linear_cross_entropy.json"; fi
}

cross_entropy_step() {
  if ((DRY)); then py benchmarks/bench_cross_entropy.py --dry-run --out "$OUT/cross_entropy_bench.json"
  else py benchmarks/bench_cross_entropy.py --vocab 128256 --threads --out "$OUT/cross_entropy_bench.json"; fi
}

train_step() {
  if ((DRY)); then py benchmarks/bench_train.py --dry-run --out "$OUT/train_bench.json"
  else py benchmarks/bench_train.py --sizes 1b --bf16 --rounds 3 --steps 30 --warmup 1 --num-workers 2 \
    --out "$OUT/train_bench.json"; fi
}

annotate_step() {
  if ((DRY)); then py benchmarks/bench_annotate.py --sizes demo --tokens 3000 --out "$OUT/annotate.json"
  else py benchmarks/bench_annotate.py --sizes 56m,112m --device cuda --tokens 1000000 --out "$OUT/annotate_gpu.json"
  fi
}

replication_step() {
  local args=(env SIZES="$REPL_SIZES" LAUNCHER=python PYTHON=python3 OUT="$OUT/replication")
  [[ -n "$REPL_DATA_PREFIX" ]] && args+=(DATA_PREFIX="$REPL_DATA_PREFIX")
  ((DRY)) && args+=(DRY_RUN=1)
  "${args[@]}" bash examples/scaling_sweep.sh
}

main() {
  echo "== run_all: OUT=$OUT dry=$DRY deadline=$DEADLINE_S s parts=$PARTS"
  if ((!DRY)) && ls .whl/*.whl >/dev/null 2>&1; then  # baselines (CCE, Liger) carried as wheels: no network there
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH="$PYTHONPATH:/tmp/site" && echo "baseline wheels: $(ls .whl)"
  fi
  export -f env_step build_step tests_step sanitizer_step flce_step cross_entropy_step train_step annotate_step \
    replication_step py
  export DRY OUT REPL_SIZES REPL_DATA_PREFIX
  step env 30 5 bash -c env_step
  step build 200 60 bash -c build_step
  step tests 120 30 bash -c tests_step
  step flce 90 30 bash -c flce_step
  step train 240 90 bash -c train_step
  step annotate 75 30 bash -c annotate_step
  step cross_entropy 45 20 bash -c cross_entropy_step
  step sanitizer 90 40 bash -c sanitizer_step
  step replication 100000 60 bash -c replication_step
  py -c "import json, sys
steps = [json.loads(l) for l in open(sys.argv[1])]
m = json.load(open(sys.argv[2])) if __import__('os').path.exists(sys.argv[2]) else None
from benchmarks.bench_common import write_json
write_json(sys.argv[3], {'script': 'benchmarks/gpu/run_all.sh', 'dry_run': sys.argv[4] == '1', 'machine': m,
                        'steps': steps, 'total_seconds': int(sys.argv[5])})
for s in steps: print(f\"{s['step']:<12} {s['status']:<22} rc={s['rc']} {s['seconds']} s\")" \
    "$STEPS" "$OUT/machine.json" "$OUT/summary.json" "$DRY" "$SECONDS"
  echo "== total $SECONDS s; results in $OUT"
}

main 2>&1 | tee "$OUT/log.txt"
