#!/usr/bin/env bash
# The one prepared check for a machine with an NVIDIA GPU (see docs/building.md, docs/benchmarks.md).
#   bash scripts/gpu_check.sh OUT_DIR
#   UNLEARNX_WHEEL=dist/unlearnx-....whl bash scripts/gpu_check.sh OUT_DIR   # install a prebuilt wheel
#   GPU_CHECK_BUDGET_S=450 (default): phases that would start after the budget are skipped, in this
#   order of priority: install, CUDA tests, op benchmarks (no compile), NPO end to end, the
#   torch.compile column, the op tests on this machine's CPU.
# Writes the log, JUnit XML, the benchmark CSVs and their printed tables to OUT_DIR.
set -uo pipefail
OUT=${1:-${OUT:-gpu_out}}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
exec > >(tee "$OUT/gpu_check.log") 2>&1
BUDGET=${GPU_CHECK_BUDGET_S:-450}
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
left() { echo $(( BUDGET - $(elapsed) )); }
phase() {  # phase NAME MIN_SECONDS: print the header, or say why it is skipped and return 1
  if [ "$(left)" -lt "$2" ]; then echo "::: SKIPPED $1 (only $(left) s of the ${BUDGET} s budget left)"; return 1; fi
  echo "::: $1 ($(elapsed) s)"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

if [ -n "${UNLEARNX_WHEEL:-}" ]; then
  echo "::: install $UNLEARNX_WHEEL"
  pip install -q --no-deps --force-reinstall "$UNLEARNX_WHEEL" || { echo "install failed"; exit 1; }
else
  echo "::: build (UNLEARNX_CUDA=ON, sm_90)"
  CMAKE_CUDA_ARCHITECTURES=90 UNLEARNX_CUDA=ON timeout 240 pip install -q --no-build-isolation --no-deps \
    -Cbuild-dir=build/gpu . || { echo "build failed"; exit 1; }
fi
(cd /tmp && python -c "import unlearnx; from unlearnx import _native; print(_native.build_info())")

if phase "CUDA tests: native CUDA and compiled Triton kernels on CUDA tensors" 60; then
  TRITON_INTERPRET=0 timeout 180 python -m pytest -q -p no:cacheprovider tests/ops -k cuda \
    --junitxml="$OUT/pytest_cuda.xml" || echo "CUDA tests FAILED"
fi

# Op benchmarks at the issue's target shapes (unlearnx.bench; one CSV schema), every backend
# (unlearnx = auto, unlearnx_native, unlearnx_triton), the eager baseline, no compile yet.
FAMILIES=$(cd /tmp && python -c "from unlearnx.bench import FAMILIES; print(' '.join(FAMILIES.values()))")
if phase "op benchmarks on the GPU, eager baselines" 90; then
  for mod in $FAMILIES; do
    name=${mod##*.}
    timeout 75 python -m "$mod" --device cuda --no-compile --csv "$OUT/op_bench_cuda.csv" \
      > "$OUT/bench_${name}_cuda.txt" 2>&1 || echo "bench $name FAILED or timed out (exit $?)"
    cat "$OUT/bench_${name}_cuda.txt"
  done
fi

if phase "NPO step end to end: cached reference log-probs vs a live reference (1.2B Llama, bf16)" 90; then
  timeout 150 python benchmarks/bench_npo_memory.py --device cuda --steps 3 --no-save \
    2>&1 | tee "$OUT/bench_npo_memory_cuda.txt" || echo "bench_npo_memory FAILED"
fi

# The torch.compile column (each composition compiles for tens of seconds): one family at a time
# while the budget lasts; its rows go to their own CSV with every provider again.
if phase "op benchmarks with the torch.compile baseline" 60; then
  for mod in $FAMILIES; do
    name=${mod##*.}
    budget=$(left)
    if [ "$budget" -lt 45 ]; then echo "SKIPPED compile column of $name ($budget s left)"; continue; fi
    timeout $(( budget < 150 ? budget : 150 )) python -m "$mod" --device cuda --reps 5 \
      --csv "$OUT/op_bench_cuda_compile.csv" > "$OUT/bench_${name}_cuda_compile.txt" 2>&1 \
      || echo "bench $name with compile FAILED or timed out (exit $?)"
    tail -n 25 "$OUT/bench_${name}_cuda_compile.txt"
  done
fi

if phase "the op tests on this machine's CPU" 60; then
  timeout $(( $(left) < 150 ? $(left) : 150 )) python -m pytest -q -p no:cacheprovider tests/ops \
    tests/test_native_build.py --junitxml="$OUT/pytest_ops_cpu.xml" || echo "CPU op tests FAILED"
fi
echo "::: done in $(elapsed) s"
