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
# FindPython's Development.SABIModule needs CMake >= 3.26 (pip-installed builds get a backport
# from scikit-build-core; this direct build does not): `pip install "cmake>=3.26"` if this fails.
cmake_version=$(cmake --version | head -1 | awk '{print $3}')
if [ "$(printf '%s\n3.26\n' "$cmake_version" | sort -V | head -1)" != "3.26" ]; then
  echo "dev_build.sh: cmake $cmake_version is older than 3.26; pip install 'cmake>=3.26' first" >&2
  exit 1
fi
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v "$PY")" \
  -DUNLEARNX_CUDA="${UNLEARNX_CUDA:-AUTO}" -DSKBUILD_PROJECT_VERSION="$("$PY" -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')" >/dev/null
cmake --build "$BUILD"
if [ -z "${NO_COPY:-}" ]; then
  # copy then rename: a new inode, so processes that have the old library mapped keep running
  for so in "$BUILD"/_C*.so; do
    cp "$so" "python/unlearnx/.$(basename "$so").tmp" && mv -f "python/unlearnx/.$(basename "$so").tmp" "python/unlearnx/$(basename "$so")"
  done
  echo "built $(ls python/unlearnx/_C*.so)"
fi
