"""CI's CPU-only proof on a CUDA build (run by .ci/run after installing the CUDA wheel; no GPU needed).

Fails unless the native library was compiled with CUDA kernels, every op of
unlearnx.ops.registry.OPS has a CUDA, a Meta (fake) and (where differentiable) an autograd kernel
in the dispatcher (registry.check_coverage), and `unlearnx info` reports a CUDA backend for each.
"""
import re
import subprocess
import sys

import torch

from unlearnx import _native
from unlearnx.ops import registry

info = _native.build_info()
assert info["native"] and info["cuda"], f"the native library is not a CUDA build: {info}"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); unlearnx CUDA kernels for sm {info['cuda_archs']}")
native_cuda = sorted(op for op, devices in _native.native_kernels().items() if "cuda" in devices)
print(f"native CUDA kernels: {', '.join(native_cuda)}")
print(registry.format_backend_table(registry.check_coverage()))

out = subprocess.run([sys.executable, "-m", "unlearnx.cli", "info"], capture_output=True, text=True)
print(out.stdout, out.stderr, sep="")
assert out.returncode == 0, f"unlearnx info exited {out.returncode}"
rows = {}
for line in out.stdout.splitlines():
    cells = re.split(r"\s{2,}", line.strip())
    if len(cells) == 3:
        rows[cells[0]] = cells[2].split()[0]
bad = {s.name: rows.get(s.name) for s in registry.OPS if rows.get(s.name) not in ("native", "triton", "reference")}
assert not bad, f"unlearnx info reports no usable CUDA backend for: {bad}"
print(f"OK: all {len(registry.OPS)} ops have CPU, CUDA and Meta kernels in this CUDA build")
