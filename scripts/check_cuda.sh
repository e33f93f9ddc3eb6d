#!/usr/bin/env bash
# Compile-checks every csrc/**/*.cu with nvcc when torch has no CUDA (the CUDA library is then not built), so CUDA
# code cannot rot unnoticed on CPU-only CI. With CUDA torch, setup.py already compiled and linked them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mapfile -t files < <(find csrc -name '*.cu' | sort)
if [ "${#files[@]}" -eq 0 ]; then echo "cuda-check: no .cu files"; exit 0; fi
if [ "$($PY -c 'import torch; print(torch.version.cuda or "")')" != "" ]; then
  echo "cuda-check: torch has CUDA; setup.py built omni_mega._C_cuda from ${#files[@]} files"; exit 0
fi
if ! command -v nvcc >/dev/null 2>&1; then
  echo "cuda-check: SKIPPED, nvcc not on PATH: ${#files[@]} .cu files not compile-checked"; exit 0
fi
incs=$($PY -c 'from torch.utils.cpp_extension import include_paths; print(" ".join("-I"+p for p in include_paths()))')
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "cuda-check: nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') compiling ${#files[@]} files for sm_90a"
start=$SECONDS
# Two at a time on CI's 2 cores (~25-30 s a file).
printf '%s\n' "${files[@]}" | xargs -P "${MAX_JOBS:-2}" -I{} sh -c '
  nvcc -std=c++20 --expt-relaxed-constexpr -gencode arch=compute_90a,code=sm_90a -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE \
       -Icsrc '"$incs"' -w -c "{}" -o "'"$out"'/$(echo {} | tr / _).o" && echo "  ok   {}" || { echo "  FAIL {}"; exit 255; }'
echo "cuda-check: all ${#files[@]} files compiled in $((SECONDS - start)) s"
