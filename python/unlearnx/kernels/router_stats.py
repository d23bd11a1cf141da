"""Triton moe_router_stats_ kernel: the GPU path when the native CUDA kernel is not compiled.

One program per BLOCK_T tokens: the [BLOCK_T, E] logit tile is read once, softmax and the top-k
(k passes of max; ties to the lower expert index, the same rule as the CPU kernel) are
done in registers, the tile is reduced over tokens per group and added to stats with 8·E float
atomics per program. No one_hot, no host sync.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK_T = 64


@triton.jit
def _router_stats_kernel(
    stats_ptr,  # [2, E, 4] fp32, accumulated in place
    logits_ptr,  # [T, E] fp32 / bf16, contiguous
    flags_ptr,  # [T] int64: 0 ignore, 1 forget, 2 retain
    T,
    E,
    NORMALIZE: tl.constexpr,
    K: tl.constexpr,
    E_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, E_PAD)
    rmask = rows < T
    cmask = cols < E
    flag = tl.load(flags_ptr + rows, mask=rmask, other=0)
    z = tl.load(logits_ptr + rows[:, None] * E + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
    z = tl.where(cmask[None, :], z.to(tl.float32), float("-inf"))
    m = tl.max(z, 1)
    ez = tl.exp(z - m[:, None])
    p = ez / tl.sum(ez, 1)[:, None]  # padded columns: exp(-inf) = 0
    # k passes of max; the lowest index among equal maxima is taken (padded columns rank at -1).
    rank = tl.where(cmask[None, :], p, -1.0)
    sel = tl.zeros([BLOCK_T, E_PAD], tl.int1)
    for _ in tl.static_range(K):
        best = tl.max(rank, 1)
        idx = tl.min(tl.where(rank == best[:, None], cols[None, :], E_PAD), 1)
        hit = cols[None, :] == idx[:, None]
        sel = sel | hit
        rank = tl.where(hit, -2.0, rank)
    topsum = tl.sum(tl.where(sel, p, 0.0), 1)
    if NORMALIZE:
        w = p / topsum[:, None]
    else:
        w = p
    for g in tl.static_range(2):
        inside = (flag == g + 1)[:, None]
        chosen = inside & sel
        base = stats_ptr + g * E * 4 + cols * 4
        tl.atomic_add(base + 0, tl.sum(tl.where(chosen, 1.0, 0.0), 0), mask=cmask)
        tl.atomic_add(base + 1, tl.sum(tl.where(chosen, w, 0.0), 0), mask=cmask)
        tl.atomic_add(base + 2, tl.sum(tl.where(inside, p, 0.0), 0), mask=cmask)
        tl.atomic_add(base + 3, tl.sum(tl.where(inside, p * p, 0.0), 0), mask=cmask)


def moe_router_stats_triton(stats: torch.Tensor, logits: torch.Tensor, flags: torch.Tensor, top_k: int,
                            normalize_topk: bool = True) -> None:
    """stats [2, E, 4] fp32 += router statistics of logits [T, E] (fp32/bf16, contiguous), flags [T] int64."""
    T, E = logits.shape
    if T == 0:
        return
    grid = (triton.cdiv(T, _BLOCK_T),)
    _router_stats_kernel[grid](stats, logits, flags, T, E, NORMALIZE=bool(normalize_topk), K=int(top_k),
                               E_PAD=triton.next_power_of_2(E), BLOCK_T=_BLOCK_T)
