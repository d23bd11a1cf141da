#!/usr/bin/env bash
# Developer build without installing: compiles the native library into build/dev and copies it
# next to the Python sources, so `PYTHONPATH=python python ...` uses this tree's kernels.
#   bash scripts/dev_build.sh [python]      (default: the python on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python}
cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v "$PY")" \
  -DUNLEARNX_CUDA="${UNLEARNX_CUDA:-AUTO}" -DSKBUILD_PROJECT_VERSION="$("$PY" -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')" >/dev/null
cmake --build build/dev
cp build/dev/_C*.so python/unlearnx/
echo "built $(ls python/unlearnx/_C*.so)"
