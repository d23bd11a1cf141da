#!/usr/bin/env bash
# The one prepared check for a machine with an NVIDIA GPU (docs/building.md, "The GPU check").
#   bash scripts/gpu_check.sh [OUT_DIR]          (default: $OUT, else gpu_out)
#   WHEEL=dist/unlearnx-*.whl bash scripts/gpu_check.sh OUT_DIR
# 1. installs the abi3 CUDA wheel built on the dev machine (WHEEL, else the newest dist/unlearnx-*.whl;
#    builds here only when there is none or it does not load with CUDA kernels);
# 2. the CPU-side coverage proof (.ci/cuda_coverage.py) on this machine's torch;
# 3. every op on CUDA tensors against its reference (tests/ops -k cuda: fp32 and bf16, odd sizes,
#    more tensors than one launch holds, dispatcher and Triton paths);
# 4. one short run of every registered classifier and LLM method on CUDA
#    (tests/methods_llm/test_methods_cuda.py);
# 5. one CLI run of the classification and LLM tasks with device=cuda;
# 6. every op benchmark at the issue-19 target shapes (unlearnx.bench, all backends, eager baseline);
# 7. the NPO step end to end (cached reference log-probs vs a live reference, 1.2B Llama, bf16);
# 8. the LLM run in bf16 and the diffusion demo on CUDA;
# 9. the torch.compile column of the op benchmarks, one family at a time.
# Steps run in that order of priority; one that would start past the budget (GPU_CHECK_BUDGET,
# 470 s) is skipped and marked so. Writes gpu_check.log, summary.md (one row per step: status,
# seconds), JUnit XML, benchmark tables and CSVs to OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${1:-${OUT:-gpu_out}}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee "$OUT/gpu_check.log") 2>&1
t0=$(date +%s)
PY=${PYTHON:-python}
export PY ROOT TRITON_INTERPRET=0  # compiled Triton on the GPU (tests/conftest.py only sets it when unset)
SUMMARY="$OUT/summary.md"
printf '| step | status | seconds |\n|---|---|---|\n' > "$SUMMARY"
failed=0

BUDGET=${GPU_CHECK_BUDGET:-470}  # seconds for everything: steps get what is left when they start

# run_step NAME TIMEOUT_S COMMAND...: runs the command from the repository root with a timeout (its
# own, capped by what is left of BUDGET) and records its status and duration in summary.md.
run_step() {
  local name=$1 limit=$2; shift 2
  local start rc status left
  start=$(date +%s)
  left=$(( BUDGET - (start - t0) ))
  if [ "$left" -lt 15 ]; then
    printf '| %s | skipped (out of the %s s budget) | 0 |\n' "$name" "$BUDGET" >> "$SUMMARY"
    echo "::: $name: skipped, budget spent"; failed=1; return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "::: $name (at $((start - t0)) s, limit ${limit} s)"
  if declare -F "$1" >/dev/null; then  # a function of this script: timeout needs a program
    timeout "$limit" bash -c "$(declare -f "$1" loads_with_cuda); $(printf '%q ' "$@")"
  else
    timeout "$limit" "$@"
  fi
  rc=$?
  case $rc in
    0) status=ok ;;
    124) status="TIMEOUT after ${limit} s"; failed=1 ;;
    *) status="FAILED (exit $rc)"; failed=1 ;;
  esac
  printf '| %s | %s | %s |\n' "$name" "$status" "$(( $(date +%s) - start ))" >> "$SUMMARY"
  echo "::: $name: $status"
  return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
$PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'GPU', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
$PY -c "import triton; print('triton', triton.__version__)" || echo "triton not importable"
$PY -m pytest --version || echo "pytest missing: the test steps below will fail"

# 1. the wheel from the dev machine; a build here only if it is missing or does not load.
loads_with_cuda() {
  (cd /tmp && $PY -c "from unlearnx import _native; i = _native.build_info(); assert i['native'] and i['cuda'], i; print(i)")
}
install_wheel() {
  local wheel=${WHEEL:-$(ls -t dist/unlearnx-*.whl 2>/dev/null | head -1)}
  if [ -n "$wheel" ] && [ -f "$wheel" ]; then
    echo "installing $wheel"
    $PY -m pip install -q --no-deps --force-reinstall "$wheel" && loads_with_cuda && return 0
    echo "the wheel did not install or load with CUDA kernels; building here"
  else
    echo "no wheel (set WHEEL or put it in dist/); building here"
  fi
  CMAKE_CUDA_ARCHITECTURES=90 UNLEARNX_CUDA=ON $PY -m pip install -q --no-build-isolation --no-deps \
    -Cbuild-dir=build/gpu . && loads_with_cuda
}
run_step "install the CUDA wheel" 240 install_wheel || { echo "no usable unlearnx build"; cat "$SUMMARY"; exit 1; }

# 2. every op has a CUDA, Meta and autograd kernel here too; `unlearnx info` names each backend.
run_step "op coverage (.ci/cuda_coverage.py)" 60 bash -c "cd /tmp && $PY '$ROOT/.ci/cuda_coverage.py'"

# 3. ops on CUDA tensors (the installed wheel: the repository's python/ is not on sys.path).
run_step "ops on CUDA vs reference (tests/ops -k cuda)" 180 \
  $PY -m pytest -q -p no:cacheprovider tests/ops -k cuda --continue-on-collection-errors \
  --junitxml="$OUT/pytest_ops_cuda.xml"

# 4. every registered method, one short run on CUDA.
run_step "every method on CUDA (tests/methods_llm/test_methods_cuda.py)" 150 \
  $PY -m pytest -q -p no:cacheprovider tests/methods_llm/test_methods_cuda.py --junitxml="$OUT/pytest_methods_cuda.xml"

# 5. one CLI run of the classification and LLM tasks on CUDA.
run_step "CLI: classification run, device=cuda" 90 \
  $PY -m unlearnx.cli run configs/methods/ssd.yaml device=cuda --out "$OUT/cli_ssd_cuda" --quiet
run_step "CLI: llm demo, --device cuda" 120 \
  $PY -m unlearnx.cli demo --task llm --quick --device cuda --out "$OUT/cli_llm_demo_cuda" --quiet

# 6. op benchmarks at the issue's target shapes (unlearnx.bench; one CSV schema), every backend
# (unlearnx = auto, unlearnx_native, unlearnx_triton) and the eager baseline; no compile yet.
FAMILIES=$(cd /tmp && $PY -c "from unlearnx.bench import FAMILIES; print(' '.join(FAMILIES.values()))")
for mod in $FAMILIES; do
  run_step "bench ${mod##*.} --device cuda (eager baselines)" 75 \
    bash -c "$PY -m $mod --device cuda --no-compile --csv '$OUT/op_bench_cuda.csv' | tee '$OUT/bench_${mod##*.}_cuda.txt'"
done

# 7. one NPO step end to end on a 1.2B Llama in bf16.
run_step "NPO step: cached reference log-probs vs a live reference (1.2B Llama, bf16)" 150 \
  bash -c "$PY benchmarks/bench_npo_memory.py --device cuda --steps 3 --no-save | tee '$OUT/bench_npo_memory_cuda.txt'"

# 8. the other task runs on CUDA.
run_step "CLI: llm run in bf16 (autocast, fp32 master weights), device=cuda" 120 \
  $PY -m unlearnx.cli run configs/llm/tofu_forget10.yaml device=cuda dtype=bfloat16 data.authors=6 train.epochs=5 \
  --out "$OUT/cli_llm_bf16_cuda" --quiet
run_step "CLI: diffusion demo, --device cuda" 150 \
  $PY -m unlearnx.cli demo --task diffusion --quick --device cuda --out "$OUT/cli_diffusion_demo_cuda" --quiet

# 9. the torch.compile column (each composition compiles for tens of seconds), family by family.
for mod in $FAMILIES; do
  run_step "bench ${mod##*.} --device cuda with the torch.compile baseline" 150 \
    bash -c "$PY -m $mod --device cuda --reps 5 --csv '$OUT/op_bench_cuda_compile.csv' > '$OUT/bench_${mod##*.}_cuda_compile.txt' 2>&1; rc=\$?; tail -n 25 '$OUT/bench_${mod##*.}_cuda_compile.txt'; exit \$rc"
done

echo "::: done in $(( $(date +%s) - t0 )) s"
cat "$SUMMARY"
exit $failed
