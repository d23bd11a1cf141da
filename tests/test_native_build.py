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

# Hot loops of the per-ISA kernel files (csrc/cpu/isa/*_isa.cpp), matched by name inside each
# ISA's namespace: each must be vector code (entry points may delegate to inner helpers).
VECTOR_KERNELS = ("ssd_dampen", "micro_tile", "grad_sq_accum", "hist_top", "mask_bytes", "restore_span", "token_stats",
                  "router_stats", "logit_diff")

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
    for kernel in VECTOR_KERNELS:
        for isa, reg in (("avx512", "zmm"), ("avx2", "ymm")):
            found = {n: c for n, c in counts.items() if f"::cpu::{isa}::" in n and kernel in n}
            assert found, f"no {isa} symbol for {kernel}"
            assert any(c[reg] > 0 for c in found.values()), f"{isa} {kernel} has no {reg} vector code: {found}"
            if isa == "avx2":
                assert all(c["zmm"] == 0 for c in found.values()), f"avx2 {kernel} uses AVX-512 registers"
    base = {n: c for n, c in counts.items() if "::cpu::base::" in n}
    assert base and all(c["ymm"] == 0 and c["zmm"] == 0 for c in base.values()), "baseline kernels use AVX"
