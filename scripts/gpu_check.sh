#!/usr/bin/env bash
# One command for a machine with a GPU: builds the CUDA library, runs every CUDA/Triton op test, every op benchmark
# on the GPU, the end-to-end step benchmarks and (when DALI imports) the image pipeline benchmark. Results go to
# benchmarks/results/ (each benchmark's --out file) and the whole output to benchmarks/results/<date>_gpu_check.log;
# a pass/fail table per step ends it, and the exit status is non-zero when any step failed.
#
# Sized for < 10 minutes on one H100: each step has its own timeout, and all of them share a budget
# (GPU_CHECK_BUDGET seconds, default 570); a step still waiting when the budget is spent counts as failed.
# Without CUDA it says so and exits 0. Usage: bash scripts/gpu_check.sh   (PY=path/to/python to pick the interpreter;
# GPU_CHECK_DRY_RUN=1 prints the plan without running it)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
BUDGET=${GPU_CHECK_BUDGET:-570}
START=$SECONDS

DRY=${GPU_CHECK_DRY_RUN:-0}  # 1: print each step's command instead of running it (to review the plan anywhere)
if ! $PY -c 'import torch' 2>/dev/null; then
  echo "gpu-check: $PY cannot import torch (set PY=/path/to/python)"; exit 1
fi
cuda_info=$($PY -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")')
[ "$DRY" = 1 ] && cuda_info=${cuda_info:-"dry run, no GPU"}
if [ -z "$cuda_info" ]; then
  versions=$($PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)')
  echo "gpu-check: no CUDA device visible to torch ($versions): nothing to check"
  exit 0
fi

mkdir -p benchmarks/results
LOG="benchmarks/results/$(date +%Y-%m-%d)_gpu_check.log"
[ "$DRY" = 1 ] && LOG=/dev/null
exec > >(tee -a "$LOG") 2>&1
echo "gpu-check: $cuda_info, $(date -Is), log $LOG"

names=() results=() times=()
# step NAME TIMEOUT_S CMD...: runs CMD with the smaller of its timeout and the budget left; records the outcome.
step() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - (SECONDS - START)))
  [ "$left" -lt "$limit" ] && limit=$left
  names+=("$name")
  if [ "$limit" -lt 10 ]; then
    echo "== $name: SKIPPED, the ${BUDGET}s budget is spent"; results+=("FAIL (no time left)"); times+=(0); return
  fi
  echo "== $name (timeout ${limit}s): $*"
  if [ "$DRY" = 1 ]; then results+=("pass (dry run)"); times+=(0); return; fi
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  times+=($((SECONDS - t0)))
  if [ "$rc" -eq 0 ]; then results+=("pass")
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then results+=("FAIL (timeout)")
  else results+=("FAIL (exit $rc)"); fi
}

arch=$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo 9.0)
# setup.py builds omni_mega._C_cuda when torch has CUDA; only this GPU's architecture keeps the build short.
step "build CUDA library (sm_${arch/./})" 300 env TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="${MAX_JOBS:-16}" \
  $PY setup.py --quiet build_ext --inplace
step "CUDA library loads" 60 \
  $PY -c 'from omni_mega.ops import has_cuda_extension as h, _ext; assert h(), _ext.load_error("_C_cuda")'
# CUDA tests carry "cuda" in their names or parameter ids (device/backend "cuda"); Triton's live in *_triton.py.
step "tests: pytest tests/ops -k 'cuda or triton'" 240 \
  $PY -m pytest -q -p no:cacheprovider tests/ops -k "cuda or triton"
step "bench rope_2d" 90 $PY benchmarks/ops/bench_rope_2d.py --device cuda --out
step "bench vet" 120 $PY benchmarks/ops/bench_vet.py --device cuda --out
# These two pick the GPU themselves when there is one (no --device flag); resize_images and bpe are CPU-only ops.
step "bench vision_positions" 60 $PY benchmarks/ops/bench_vision_positions.py --out
step "bench pack_images" 90 $PY benchmarks/ops/bench_pack_images.py --out
step "bench e2e step" 120 $PY benchmarks/e2e/bench_step.py --out
step "bench e2e omni step" 120 $PY benchmarks/e2e/bench_omni_step.py --device cuda --out
if $PY -c 'import nvidia.dali' 2>/dev/null; then
  step "bench images (DALI)" 120 $PY benchmarks/data/bench_images.py --out
else
  echo "== bench images (DALI): not run, nvidia.dali does not import (pip install -e '.[dali]')"
fi

failed=0
echo
echo "gpu-check summary ($cuda_info, $((SECONDS - START)) s in all)"
printf '| %-46s | %-20s | %7s |\n' step result seconds
printf '| %-46s | %-20s | %7s |\n' "$(printf -- '-%.0s' {1..46})" "$(printf -- '-%.0s' {1..20})" "-------"
for i in "${!names[@]}"; do
  printf '| %-46s | %-20s | %7s |\n' "${names[$i]}" "${results[$i]}" "${times[$i]}"
  [[ "${results[$i]}" == pass* ]] || failed=$((failed + 1))
done
echo "results: benchmarks/results/ (*.md per benchmark), log: $LOG"
[ "$failed" -eq 0 ] || { echo "gpu-check: $failed step(s) failed"; exit 1; }
