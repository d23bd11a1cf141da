#!/usr/bin/env bash
# Developer build without installing: compiles the native library into a build folder and copies
# it next to the Python sources, so `PYTHONPATH=python python ...` uses this tree's kernels.
#   bash scripts/dev_build.sh [python]        default: the python on PATH; build/dev
#   BUILD_DIR=build/cuda UNLEARNX_CUDA=ON NO_COPY=1 bash scripts/dev_build.sh /work/venv-cuda/bin/python
#                                             compile-and-link check against a CUDA torch
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python}
BUILD=${BUILD_DIR:-build/dev}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v "$PY")" \
  -DUNLEARNX_CUDA="${UNLEARNX_CUDA:-AUTO}" -DSKBUILD_PROJECT_VERSION="$("$PY" -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')" >/dev/null
cmake --build "$BUILD"
if [ -z "${NO_COPY:-}" ]; then
  cp "$BUILD"/_C*.so python/unlearnx/
  echo "built $(ls python/unlearnx/_C*.so)"
fi
