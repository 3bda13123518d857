#!/usr/bin/env bash
# One-shot check of the CUDA kernels on a machine with a GPU (written for an H200 with torch 2.11 + CUDA 13,
# 16 cores, nvcc and compute-sanitizer; no network needed). In under 10 minutes it
#   1. builds attnkern in place for the visible GPU only (TORCH_CUDA_ARCH_LIST = its compute capability),
#      and keeps nvcc's per-kernel register/shared-memory report (ptxas.txt);
#   2. runs the CUDA tests: the test suite's cuda parametrisations (the ops' tests run the hand-written
#      kernels, tests/conftest.py sets attnkern.ops.cuda_kernels("always"); tests/test_cuda_routing.py runs
#      the ops as the CUDA routing table sends them), then scripts/kernel_sweep.py (every kernel, forward
#      and backward, every dtype, against the references);
#   3. runs the sweep (float32 and bfloat16) under compute-sanitizer memcheck, racecheck, initcheck and
#      synccheck, with PyTorch's caching allocator off so that an overrun leaves its allocation;
#   4. times window attention and criss-cross attention, kernels and plain formulation, forward and backward,
#      at the performance model's shapes next to its figures (benchmarks/measure_ops.py, bfloat16 and
#      float32: the measured figures that replace the model's), then runs every benchmark (python -m
#      attnkern.bench on CUDA: float32 and bfloat16 rows, and for the routed families both "attnkern" (the
#      routing table) and "attnkern kernels" (the kernels); --with-compile adds the torch.compile rows,
#      several minutes more);
# and writes each step's log and summary.md — one table of the steps (result, time, log), the measured
# ops, then the benchmark table — to $OUT (default build/gpu-check-<date>). Steps run in that order under
# one deadline; a step that runs out of time is marked "timed out" and the next one starts.
#
#   scripts/gpu_check.sh [--dry-run] [--skip-build] [--with-compile] [--out DIR]
#
# --dry-run runs the same steps on this machine's CPU, the emulated device standing in for the GPU: the
# build is the CPU extension and the emulated kernels (tools/cuda_emulation.py), the tests are the
# emulated ones, each sanitizer step runs the sweep on the emulated device (its compute-sanitizer command
# is written to the log), measure_ops.py and the benchmarks run --smoke on the CPU. It checks the script,
# not the kernels.
# Environment: PYTHON (default python3), DEADLINE_S (default 570; 1800 with --dry-run).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DRY_RUN=0 SKIP_BUILD=0 WITH_COMPILE=0 OUT_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --with-compile) WITH_COMPILE=1 ;;
    --out) OUT_DIR="$2"; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT_DIR:-${OUT:-$ROOT/build/gpu-check-$(date +%Y%m%d-%H%M%S)}}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
DEADLINE_S=${DEADLINE_S:-$([ $DRY_RUN = 1 ] && echo 1800 || echo 570)}
START=$(date +%s)
ROWS=()
FAILED=0

# run_step NAME LIMIT_S LOG COMMAND...: runs COMMAND with its output in $OUT/LOG, for at most LIMIT_S
# seconds and never past the deadline; adds a row to the summary table, with the last summary line of
# the log (or of the file $VERDICT_FROM, when set).
run_step() {
  local name=$1 limit=$2 log=$3; shift 3
  local left=$(( DEADLINE_S - ($(date +%s) - START) ))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -le 5 ]; then
    ROWS+=("| $name | not run: no time left | 0 | |"); FAILED=1; return
  fi
  echo "== $name (at most ${limit} s) -> $OUT/$log"
  local t0 rc status verdict
  t0=$(date +%s)
  { echo "\$ $*"; echo; } > "$OUT/$log"
  timeout --kill-after=10 "$limit" "$@" >> "$OUT/$log" 2>&1
  rc=$?
  case $rc in
    0) status="ok" ;;
    124|137) status="timed out after ${limit} s"; FAILED=1 ;;
    *) status="failed (exit $rc)"; FAILED=1 ;;
  esac
  verdict=$(grep -hE "[0-9]+ passed|[0-9]+ failed|ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/$log" ${VERDICT_FROM:-} \
            2>/dev/null | tail -n 1 | tr -d '=|' | sed 's/^ *//' | cut -c1-110)
  ROWS+=("| $name | $status${verdict:+: $verdict} | $(( $(date +%s) - t0 )) | [$log]($log) |")
  echo "   $status${verdict:+: $verdict}"
}

# ---- the environment ----
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) files changed"
  echo "host: $(hostname), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  $PYTHON -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu available', torch.cuda.is_available())"
  if [ $DRY_RUN = 0 ]; then nvidia-smi; nvcc --version | tail -n 2; compute-sanitizer --version | head -n 2; fi
} > "$OUT/environment.txt" 2>&1

SWEEP=($PYTHON scripts/kernel_sweep.py)
if [ $DRY_RUN = 0 ]; then
  ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' ')
  [ -n "$ARCH" ] || ARCH=$($PYTHON -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  SWEEP+=(--device cuda)
else
  SWEEP+=(--emulated)
fi

# ---- 1. build ----
if [ $SKIP_BUILD = 0 ]; then
  if [ $DRY_RUN = 0 ]; then
    run_step "build for sm_${ARCH/./} (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=$ARCH)" 240 build.log \
      env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" $PYTHON setup.py build_ext --inplace
    grep -E "ptxas info *: (Compiling|Function properties|Used)" "$OUT/build.log" > "$OUT/ptxas.txt" || true
  else
    run_step "build: CPU extension (dry run)" 900 build.log \
      env ATTNKERN_CPU_ONLY=1 MAX_JOBS="${MAX_JOBS:-1}" $PYTHON setup.py build_ext --inplace
    run_step "build: emulated CUDA kernels (dry run)" 600 build-emulated.log \
      env MAX_JOBS="${MAX_JOBS:-1}" $PYTHON tools/cuda_emulation.py build
  fi
fi

# ---- 2. the CUDA tests ----
# on up to 4 processes where pytest-xdist is installed (the GPU machine's environment may not have it)
WORKERS=$(( $(nproc) < 4 ? $(nproc) : 4 ))
PARALLEL=()
$PYTHON -c "import xdist" 2>/dev/null && PARALLEL=(-n "$WORKERS")
if [ $DRY_RUN = 0 ]; then
  run_step "CUDA tests (pytest -k cuda${PARALLEL:+, ${PARALLEL[*]}})" 150 tests.log \
    $PYTHON -m pytest -q -p no:cacheprovider "${PARALLEL[@]}" tests -k "cuda and not emulat"
else
  run_step "CUDA tests on the emulated device (dry run${PARALLEL:+, ${PARALLEL[*]}})" 600 tests.log \
    $PYTHON -m pytest -q -p no:cacheprovider "${PARALLEL[@]}" tests/test_cuda_emulated.py tests/test_emulator.py
fi
run_step "kernel sweep: every kernel, every dtype" 90 sweep.log "${SWEEP[@]}"

# ---- 3. compute-sanitizer over the sweep ----
for tool in memcheck racecheck initcheck synccheck; do
  SANITIZER=(compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 30 --log-file "$OUT/sanitizer-$tool.txt")
  if [ $DRY_RUN = 0 ]; then
    VERDICT_FROM="$OUT/sanitizer-$tool.txt" run_step "compute-sanitizer $tool (sweep, float32 and bfloat16)" 60 \
      "$tool.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${SANITIZER[@]}" "${SWEEP[@]}" --dtypes float32,bfloat16
  else
    run_step "$tool: the sweep on the emulated device (dry run)" 300 "$tool.log" \
      bash -c 'echo "dry run: on a GPU this step runs: $1"; echo; shift; exec "$@"' _ \
      "PYTORCH_NO_CUDA_MEMORY_CACHING=1 ${SANITIZER[*]} $PYTHON scripts/kernel_sweep.py --device cuda --dtypes float32,bfloat16" \
      "${SWEEP[@]}" --dtypes float32,bfloat16
  fi
done

# ---- 4. the ops against the performance model, then every benchmark ----
OPS_DTYPES="bfloat16 float32"
for dtype in $OPS_DTYPES; do
  if [ $DRY_RUN = 0 ]; then
    run_step "ops against the model ($dtype: benchmarks/measure_ops.py)" 120 "ops-$dtype.log" \
      $PYTHON benchmarks/measure_ops.py --device cuda --dtype "$dtype" --json "$OUT/ops-$dtype.json"
  else
    run_step "ops (measure_ops.py --smoke on the CPU, $dtype, dry run)" 120 "ops-$dtype.log" \
      $PYTHON benchmarks/measure_ops.py --device cpu --smoke --dtype "$dtype" --json "$OUT/ops-$dtype.json"
  fi
done
BENCH=($PYTHON -m attnkern.bench --json "$OUT/bench.json")
[ $WITH_COMPILE = 1 ] || BENCH+=(--no-compile)
if [ $DRY_RUN = 0 ]; then
  run_step "benchmarks (python -m attnkern.bench, CUDA)" 600 bench.log "${BENCH[@]}" --device cuda --budget 0.25
else
  run_step "benchmarks (--smoke on the CPU, dry run)" 900 bench.log "${BENCH[@]}" --device cpu --smoke
fi

# ---- the summary ----
{
  echo "# GPU check $( [ $DRY_RUN = 1 ] && echo '(dry run on the CPU: the emulated device stands in for the GPU)')"
  echo
  echo "$(head -n 1 "$OUT/environment.txt"); $(sed -n 2p "$OUT/environment.txt"); $(grep -m1 '^torch' "$OUT/environment.txt")"
  [ $DRY_RUN = 0 ] && echo "GPU: $(nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader | head -n 1)"
  echo
  echo "| step | result | seconds | log |"
  echo "|---|---|---:|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "Total: $(( $(date +%s) - START )) s."
  echo
  for dtype in $OPS_DTYPES; do
    sed -n '/^## Measured ops/,$p' "$OUT/ops-$dtype.log" 2>/dev/null
  done
  if grep -q "^| family" "$OUT/bench.log" 2>/dev/null; then
    echo "## Benchmarks"
    echo
    sed -n '/^attnkern /,$p' "$OUT/bench.log"
  fi
} > "$OUT/summary.md"
cat "$OUT/summary.md"
exit $FAILED
