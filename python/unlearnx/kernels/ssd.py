"""Triton SSD kernel: the GPU path when the native CUDA kernel is not compiled.

One launch per tensor (the interpreter cannot follow a device-side pointer table); the selected
count is accumulated on the device with an atomic add, so there is no host synchronization.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _ssd_dampen_kernel(
    theta_ptr,  # [n] fp32 or bf16, in place
    forget_ptr,  # [n] fp32, I_f
    full_ptr,  # [n] fp32, I_D
    count_ptr,  # [1] int64, selected count (accumulated)
    n,
    alpha,
    lam,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    f = tl.load(forget_ptr + offs, mask=inb, other=0.0)
    d = tl.load(full_ptr + offs, mask=inb, other=0.0)
    sel = (f > alpha * d) & inb
    # IEEE division so the GPU result matches the CPU kernels and the reference bit for bit.
    ratio = tl.math.div_rn(lam * d, tl.where(sel, f, 1.0))
    factor = tl.where(ratio < 1.0, ratio, 1.0)
    theta = tl.load(theta_ptr + offs, mask=sel, other=0.0).to(tl.float32)
    tl.store(theta_ptr + offs, (theta * factor).to(theta_ptr.dtype.element_ty), mask=sel)
    tl.atomic_add(count_ptr, tl.sum(sel.to(tl.int64), axis=0))


def ssd_dampen_triton(params, forget_importance, full_importance, alpha: float, lam: float) -> torch.Tensor:
    device = params[0].device if params else torch.device("cpu")
    count = torch.zeros(1, dtype=torch.int64, device=device)
    for p, f, d in zip(params, forget_importance, full_importance):
        n = p.numel()
        if n == 0:
            continue
        _ssd_dampen_kernel[(triton.cdiv(n, _BLOCK),)](p, f, d, count, n, alpha, lam, BLOCK=_BLOCK)
    return count.reshape(())
