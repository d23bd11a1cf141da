"""Triton token_stats kernel: the GPU path when the native CUDA kernel is not compiled.

One program per token row; the row is read once in BLOCK-wide chunks with an online max and
rescaled sums s0 = sum e^d, s1 = sum e^d d, s2 = sum e^d d^2 (d = z - running max), exactly as the
CPU kernel (csrc/include/unlearnx/token_stats.h). The label's logit is picked out of the chunk
that holds it with a compare-and-sum, so the kernel has no data-dependent address (the
interpreter cannot follow one).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _token_stats_kernel(
    logits_ptr,  # [N, V] fp32 / bf16 / fp16, unit stride along V
    labels_ptr,  # [N] int64
    logp_ptr,  # [N] fp32 out: log p(label)
    mu_ptr,  # [N] fp32 out: sum_v p log p
    var_ptr,  # [N] fp32 out: sum_v p (log p)^2 - mu^2
    V,
    row_stride,
    ignore_index,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index
    in_range = (label >= 0) & (label < V)
    base = logits_ptr + row * row_stride
    m = tl.full([], float("-inf"), tl.float32)
    s0 = tl.zeros([], tl.float32)
    s1 = tl.zeros([], tl.float32)
    s2 = tl.zeros([], tl.float32)
    zy = tl.zeros([], tl.float32)
    n = tl.where(valid, V, 0)  # ignored rows skip the vocabulary
    for start in range(0, n, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        # Nothing accumulated yet (m = -inf): no rescale; an all -inf prefix keeps d finite via m_safe.
        delta = tl.where(m == float("-inf"), 0.0, m_new - m)
        r = tl.exp(-delta)
        s2 = r * (s2 - 2.0 * delta * s1 + delta * delta * s0)
        s1 = r * (s1 - delta * s0)
        s0 = r * s0
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        d0 = z - m_safe
        d = tl.maximum(d0, -87.0)
        e = tl.where(d0 < -87.0, 0.0, tl.exp(d))
        s0 += tl.sum(e, axis=0)
        s1 += tl.sum(e * d, axis=0)
        s2 += tl.sum(e * d * d, axis=0)
        zy += tl.sum(tl.where(cols == label, z, 0.0), axis=0)
        m = m_new
    log_s0 = tl.log(s0)
    mean_d = s1 / s0
    var = tl.maximum(s2 / s0 - mean_d * mean_d, 0.0)
    logp = tl.where(in_range, zy - m - log_s0, float("nan"))
    tl.store(logp_ptr + row, tl.where(valid, logp, 0.0))
    tl.store(mu_ptr + row, tl.where(valid, mean_d - log_s0, 0.0))
    tl.store(var_ptr + row, tl.where(valid, var, 0.0))


def token_stats_triton(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
    """(logp, mu, var) fp32 shaped like labels; logits [..., V] contiguous, labels [...] int64."""
    vocab = logits.shape[-1]
    z = logits.reshape(-1, vocab)
    y = labels.reshape(-1)
    out = [torch.empty(y.shape, dtype=torch.float32, device=logits.device) for _ in range(3)]
    if y.numel():
        _token_stats_kernel[(y.numel(),)](z, y, *out, vocab, z.stride(0), ignore_index, BLOCK=_BLOCK)
    return tuple(t.view(labels.shape) for t in out)
