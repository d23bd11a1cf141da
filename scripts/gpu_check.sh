#!/usr/bin/env bash
# The one prepared check for a machine with an NVIDIA GPU (see docs/building.md).
#   bash scripts/gpu_check.sh OUT_DIR
# Builds unlearnx with CUDA against the machine's torch, runs the CUDA and Triton tests and the
# quick benchmarks, and writes logs and CSV files to OUT_DIR. Budget: under 8 minutes.
set -uo pipefail
OUT=${1:-${OUT:-gpu_out}}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
exec > >(tee "$OUT/gpu_check.log") 2>&1
t0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
echo "::: build (UNLEARNX_CUDA=ON, sm_90)"
CMAKE_CUDA_ARCHITECTURES=90 UNLEARNX_CUDA=ON timeout 240 pip install -q --no-build-isolation --no-deps -Cbuild-dir=build/gpu . || { echo "build failed"; exit 1; }
(cd /tmp && python -c "import unlearnx; from unlearnx import _native; print(_native.build_info())")
echo "::: CUDA tests: native CUDA and compiled Triton kernels on CUDA tensors ($(( $(date +%s) - t0 )) s)"
TRITON_INTERPRET=0 timeout 180 python -m pytest -q -p no:cacheprovider tests/ops -k cuda \
  --junitxml="$OUT/pytest_cuda.xml" || echo "CUDA tests FAILED"
echo "::: the op tests on CPU on this machine ($(( $(date +%s) - t0 )) s)"
timeout 150 python -m pytest -q -p no:cacheprovider tests/ops tests/test_native_build.py \
  --junitxml="$OUT/pytest_ops_cpu.xml" || echo "CPU op tests FAILED"
echo "::: quick GPU benchmark ($(( $(date +%s) - t0 )) s)"
# Only bench_ssd has a --device mode so far; the other op benchmarks are CPU-only (docs/benchmarks.md).
# tests/ops/test_ops_cuda_devices.py (in the CUDA tests above) checks every other op on CUDA tensors.
timeout 120 python benchmarks/bench_ssd.py --device cuda --quick --no-compile 2>&1 | tee "$OUT/bench_ssd_cuda.txt" || echo "bench_ssd FAILED"
cp benchmarks/results/*.csv "$OUT/" 2>/dev/null || true
echo "::: done in $(( $(date +%s) - t0 )) s"
