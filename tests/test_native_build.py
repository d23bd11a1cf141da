"""The native library: what it was built with, and that its SIMD paths really are vector code.

Out-of-tree builds silently fall back to scalar code unless the ISA flags reach the compiler, so
this disassembles the per-ISA kernel entry points and counts vector registers in each.
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import unlearnx
from unlearnx import _native

# Per-ISA kernel entry points (csrc/cpu/isa/*_isa.cpp) that must be vector code.
VECTOR_KERNELS = ("ssd_dampen_f32", "ssd_dampen_bf16")
VECTOR_KERNELS += ("token_stats_f32", "token_stats_bf16", "token_stats_f16")

pytestmark = pytest.mark.skipif(not _native.native_loaded(), reason="native library not built")


def test_build_info():
    info = _native.build_info()
    assert info["version"] == unlearnx.__version__
    assert info["torch_target"] == "2.10"
    assert info["cpu_isa_active"] in info["cpu_isas"]


def _functions_with_vector_registers():
    so = Path(_native._C.__file__)
    out = subprocess.run(["objdump", "-d", "-C", str(so)], capture_output=True, text=True, check=True).stdout
    counts, name = {}, None
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            name = m.group(1)
            counts[name] = {"xmm": 0, "ymm": 0, "zmm": 0}
        elif name:
            for reg in ("xmm", "ymm", "zmm"):
                counts[name][reg] += line.count(f"%{reg}")
    return counts


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not available")
@pytest.mark.skipif("avx512" not in _native.build_info().get("cpu_isas", []), reason="not an x86-64 build")
def test_isa_kernels_are_vectorized():
    counts = _functions_with_vector_registers()
    kernels = {n: c for n, c in counts.items() if "::cpu::" in n and any(f"::{k}(" in n for k in VECTOR_KERNELS)}
    assert len(kernels) == 3 * len(VECTOR_KERNELS), f"per-ISA kernel symbols missing: {sorted(kernels)}"
    for name, c in kernels.items():
        if "::avx512::" in name:
            assert c["zmm"] > 0, f"{name} has no 512-bit vector code: {c}"
        elif "::avx2::" in name:
            assert c["ymm"] > 0 and c["zmm"] == 0, f"{name} is not 256-bit vector code: {c}"
        elif "::base::" in name:
            assert c["ymm"] == 0 and c["zmm"] == 0, f"{name} uses instructions beyond the x86-64 baseline: {c}"
