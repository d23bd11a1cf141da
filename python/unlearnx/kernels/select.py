"""Triton kernels of the selection ops: the GPU path when the native CUDA kernels are not compiled.

global_select: radix select in four 8-bit digit passes over the order-preserving keys (same keys
and rules as csrc/include/unlearnx/select.h); each pass histograms the digit of the elements whose
higher digits match the prefix found so far, and the next digit is chosen on the device with torch
ops (no host sync, except the one NaN check after the first pass). One launch per tensor (the
interpreter cannot follow a device-side pointer table). The exact-count tie limits are computed
with torch ops (a per-tensor cumulative count of ties); the native CUDA kernel does that in-kernel.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024
_RADIX_BLOCK = 1024


@triton.jit
def _key(x, ABSOLUTE: tl.constexpr):
    u = x.to(tl.float32).to(tl.uint32, bitcast=True)
    if ABSOLUTE:
        return u & 0x7FFFFFFF
    u = tl.where(u == 0x80000000, 0, u)  # -0 -> +0
    return tl.where((u & 0x80000000) != 0, ~u, u | 0x80000000)


@triton.jit
def _radix_hist_kernel(
    x_ptr,  # [n] fp32 / bf16 / fp16
    hist_ptr,  # [256] int64, accumulated
    state_ptr,  # [3] int64: key prefix found so far, rank left, elements below
    nan_ptr,  # [1] int64, NaN count of this tensor (first pass only)
    n,
    SHIFT: tl.constexpr,
    ABSOLUTE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    x = tl.load(x_ptr + offs, mask=inb, other=0.0)
    key = _key(x, ABSOLUTE)
    valid = inb
    if SHIFT == 24:
        u = x.to(tl.float32).to(tl.uint32, bitcast=True)
        tl.atomic_add(nan_ptr, tl.sum(((u & 0x7FFFFFFF) > 0x7F800000) & inb, axis=0).to(tl.int64))
    else:
        prefix = tl.load(state_ptr).to(tl.uint32)
        valid = valid & (((key ^ prefix) >> (SHIFT + 8)) == 0)
    digit = ((key >> SHIFT) & 0xFF).to(tl.int32)
    h = tl.histogram(tl.where(valid, digit, 256), 512)
    bins = tl.arange(0, 512)
    tl.atomic_add(hist_ptr + bins, h.to(tl.int64), mask=bins < 256)


@triton.jit
def _mask_kernel(
    x_ptr,  # [n] fp32 / bf16 / fp16
    out_ptr,  # [n] bool (as uint8), or [ceil(n / 8)] uint8 when PACKED
    t_ptr,  # [] fp32 threshold
    limit_ptr,  # [1] int64, this tensor's tie limit
    n,
    ABSOLUTE: tl.constexpr,
    LARGEST: tl.constexpr,
    PACKED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    t = tl.load(t_ptr)
    limit = tl.load(limit_ptr)
    if PACKED:
        byte = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        bit = tl.arange(0, 8)
        idx = byte[:, None] * 8 + bit[None, :]
    else:
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = idx < n
    v = tl.load(x_ptr + idx, mask=inb, other=0.0).to(tl.float32)
    if ABSOLUTE:
        v = tl.abs(v)
    if LARGEST:
        beyond = v > t
    else:
        beyond = v < t
    keep = (beyond | ((v == t) & (idx < limit))) & inb
    if PACKED:
        packed = tl.sum(keep.to(tl.int32) << bit[None, :], axis=1)
        tl.store(out_ptr + byte, packed.to(tl.uint8), mask=byte * 8 < n)
    else:
        tl.store(out_ptr + idx, keep.to(tl.uint8), mask=inb)


@triton.jit
def _count_kernel(m_ptr, count_ptr, nbytes, PACKED: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    b = tl.load(m_ptr + offs, mask=offs < nbytes, other=0).to(tl.int32)
    if PACKED:
        c = tl.sum(tl.sum((b[:, None] >> tl.arange(0, 8)[None, :]) & 1, axis=1), axis=0)
    else:
        c = tl.sum((b != 0).to(tl.int32), axis=0)
    tl.atomic_add(count_ptr, c.to(tl.int64))


@triton.jit
def _restore_kernel(
    p_ptr,  # [n] raw bits (int16/int32/int64 view), in place
    o_ptr,  # [n] raw bits of the originals (unused without HAS_O)
    m_ptr,  # [n] uint8 mask, or [ceil(n / 8)] packed
    n,
    HAS_O: tl.constexpr,
    PACKED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    if PACKED:
        keep = ((tl.load(m_ptr + offs // 8, mask=inb, other=0).to(tl.int32) >> (offs % 8).to(tl.int32)) & 1) != 0
    else:
        keep = tl.load(m_ptr + offs, mask=inb, other=0) != 0
    restore = inb & ~keep
    if HAS_O:
        src = tl.load(o_ptr + offs, mask=restore, other=0)
    else:
        src = tl.zeros((BLOCK,), dtype=p_ptr.dtype.element_ty)
    tl.store(p_ptr + offs, src, mask=restore)


def _bits_to_f32(key: torch.Tensor, absolute: bool) -> torch.Tensor:
    """Inverse of the key map on a 0-dim int64 tensor (device side)."""
    if absolute:
        bits = key
    else:
        bits = torch.where(key >= 2**31, key - 2**31, (~key) & 0xFFFFFFFF)
    bits = torch.where(bits >= 2**31, bits - 2**32, bits)
    return bits.to(torch.int32).view(torch.float32).reshape(())


def global_select_triton(xs, k: int, absolute: bool, largest: bool, exact: bool):
    device = xs[0].device
    n_total = sum(x.numel() for x in xs)
    if n_total == 0:
        raise ValueError("xs holds no elements; the k-th value of an empty list is undefined")
    if not 1 <= k <= n_total:
        raise ValueError(f"k must be in [1, {n_total}] (1-based, like torch.kthvalue), got {k}")
    ks = n_total - k + 1 if largest else k
    state = torch.tensor([0, ks, 0], dtype=torch.int64, device=device)
    nans = torch.zeros(len(xs), dtype=torch.int64, device=device)
    n_equal = None
    for shift in (24, 16, 8, 0):
        hist = torch.zeros(256, dtype=torch.int64, device=device)
        for i, x in enumerate(xs):
            if x.numel():
                grid = (triton.cdiv(x.numel(), _RADIX_BLOCK),)
                _radix_hist_kernel[grid](x, hist, state, nans[i:], x.numel(), SHIFT=shift, ABSOLUTE=absolute,
                                         BLOCK=_RADIX_BLOCK)
        if shift == 24:
            bad = nans.nonzero()
            if bad.numel():
                raise ValueError(f"xs[{int(bad[0])}] contains NaN; NaN has no rank (remove or replace it, e.g. torch.nan_to_num)")
        cum = hist.cumsum(0)
        d = torch.searchsorted(cum, state[1:2]).clamp(max=255)
        below = (cum[d] - hist[d]).reshape(())
        state = torch.stack([state[0] | (d.reshape(()) << shift), state[1] - below, state[2] + below])
        n_equal = hist[d].reshape(())
    value = _bits_to_f32(state[0], absolute)
    n_less = state[2]
    beyond = (n_total - n_less - n_equal) if largest else n_less
    counts = torch.stack([beyond, n_equal])
    numels = torch.tensor([x.numel() for x in xs], dtype=torch.int64, device=device)
    if not exact:
        return value, counts, numels
    need = k - beyond  # ties to keep, first in list/flat order
    limits = []
    done = torch.zeros((), dtype=torch.int64, device=device)
    for x in xs:
        v = x.reshape(-1).float()
        if absolute:
            v = v.abs()
        cum_ties = (v == value).cumsum(0)
        left = need - done
        ties_here = cum_ties[-1] if v.numel() else done * 0
        pos = torch.searchsorted(cum_ties, left.reshape(1)).reshape(()) + 1 if v.numel() else done * 0
        limits.append(torch.where(left <= 0, 0, torch.where(left > ties_here, v.numel(), pos)))
        done = done + ties_here
    return value, counts, torch.stack(limits)


def threshold_masks_triton(xs, threshold, tie_limits, absolute: bool, largest: bool, packed: bool):
    out = []
    for i, x in enumerate(xs):
        n = x.numel()
        if packed:
            o = torch.empty((n + 7) // 8, dtype=torch.uint8, device=x.device)
            grid = (triton.cdiv(o.numel(), _BLOCK // 8),)
            block = _BLOCK // 8
        else:
            o = torch.empty(x.shape, dtype=torch.bool, device=x.device)
            grid = (triton.cdiv(n, _BLOCK),)
            block = _BLOCK
        if n:
            _mask_kernel[grid](x, o.view(torch.uint8), threshold, tie_limits[i:], n, ABSOLUTE=absolute,
                               LARGEST=largest, PACKED=packed, BLOCK=block)
        out.append(o)
    return out


def mask_counts_triton(masks):
    counts = torch.zeros(len(masks), dtype=torch.int64, device=masks[0].device)
    for i, m in enumerate(masks):
        if m.numel():
            _count_kernel[(triton.cdiv(m.numel(), _BLOCK),)](m.view(torch.uint8), counts[i:], m.numel(),
                                                            PACKED=m.dtype == torch.uint8, BLOCK=_BLOCK)
    return counts


_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def masked_restore_triton_(params, originals, masks, states, state_owner):
    def run(t, o, m):
        n = t.numel()
        if n == 0:
            return
        bits = _BITS[t.element_size()]
        tv = t.view(bits)
        ov = o.view(bits) if o is not None else tv
        _restore_kernel[(triton.cdiv(n, _BLOCK),)](tv, ov, m.view(torch.uint8), n, HAS_O=o is not None,
                                                  PACKED=m.dtype == torch.uint8, BLOCK=_BLOCK)

    for i, (p, m) in enumerate(zip(params, masks)):
        run(p, originals[i] if originals else None, m)
        for s, owner in zip(states, state_owner):
            if owner == i:
                run(s, None, m)
