"""Triton logit-difference decoding kernels: the ops' CUDA implementation (there is no CUDA C++ kernel).

Semantics: python/unlearnx/ops/logit_diff.py. One program per row, the row read in BLOCK-wide
chunks; nothing is materialized (the combined logits are recomputed from the two input rows in
every pass, which on a GPU hits L2). Order statistics are radix selects on the order-preserving
32-bit key of the fp32 value, one key bit per pass from the top: the k-th largest value is the
largest key K with #{key >= K} >= k, and the top-p threshold the largest K with
Σ_{key >= K} e^{s − max s} >= top_p·Σ e^{s − max s} (32 reductions over the row each — a sort-free
select whose cost does not depend on the data). Gumbel noise is the same counter-based splitmix64
hash as the CPU kernel and the reference. Compiled without FP fusion so z_t − w·z_a rounds twice.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _key(x):
    """Order-preserving key in [0, 2^32) (int64) of fp32 x; −0 and +0 share one."""
    x = tl.where(x == 0.0, 0.0, x)
    b = x.to(tl.int32, bitcast=True).to(tl.int64)
    u = b & 0xFFFFFFFF
    return tl.where(b < 0, u ^ 0xFFFFFFFF, u | 0x80000000)


@triton.jit
def _unkey(k):
    u = tl.where(k >= 0x80000000, k & 0x7FFFFFFF, k ^ 0xFFFFFFFF)
    return u.to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _u64(hi, lo):
    return (tl.full([], hi, tl.uint64) << 32) | tl.full([], lo, tl.uint64)


@triton.jit
def _splitmix64(x):
    x = x + _u64(0x9E3779B9, 0x7F4A7C15)
    x = (x ^ (x >> 30)) * _u64(0xBF58476D, 0x1CE4E5B9)
    x = (x ^ (x >> 27)) * _u64(0x94D049BB, 0x133111EB)
    return x ^ (x >> 31)


@triton.jit
def _combined(zt_row, za_row, cols, V, w, thr, MODE: tl.constexpr):
    """Combined logits c of the columns `cols` (−inf past V); thr: ULD's filter threshold."""
    inside = cols < V
    zt = tl.load(zt_row + cols, mask=inside, other=float("-inf")).to(tl.float32)
    if MODE == 1:
        za = tl.load(za_row + cols, mask=inside, other=0.0).to(tl.float32)
        c = tl.where((zt >= thr) & (za != float("-inf")), zt - w * za, zt)
    elif MODE == 2:
        za = tl.load(za_row + cols, mask=inside, other=0.0).to(tl.float32)
        d = za - zt
        c = tl.where(zt == float("-inf"), float("-inf"), zt - w * tl.where(d > 0.0, d, 0.0))
    else:
        c = zt
    return tl.where(inside, c, float("-inf"))


@triton.jit
def _key_weight(zt_row, za_row, cols, V, w, thr, kth_c, T, smax, MODE: tl.constexpr, SRC: tl.constexpr):
    """(key, weight) of a chunk for a select: SRC 0 target logits (weight 1), 1 combined logits
    (weight 1), 2 kept scaled logits s (weight e^{s − smax}, 0 where dropped)."""
    inside = cols < V
    if SRC == 0:
        v = tl.load(zt_row + cols, mask=inside, other=float("-inf")).to(tl.float32)
        wt = inside.to(tl.float32)
    else:
        c = _combined(zt_row, za_row, cols, V, w, thr, MODE)
        if SRC == 1:
            v = c
            wt = inside.to(tl.float32)
        else:
            v = c / T
            kept = inside & (c > float("-inf")) & (c >= kth_c)
            wt = tl.where(kept, tl.exp(v - smax), 0.0)
    return _key(v), wt


@triton.jit
def _radix_select(zt_row, za_row, V, w, thr, kth_c, T, smax, target, MODE: tl.constexpr, SRC: tl.constexpr,
                  BLOCK: tl.constexpr):
    """The largest key K with Σ_{key >= K} weight >= target (0 when the total stays below it)."""
    prefix = tl.zeros([], tl.int64)
    one = tl.full([], 1, tl.int64)
    for i in range(32):
        cand = prefix | (one << (31 - i))
        acc = tl.zeros([], tl.float32)
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            key, wt = _key_weight(zt_row, za_row, cols, V, w, thr, kth_c, T, smax, MODE, SRC)
            acc += tl.sum(tl.where(key >= cand, wt, 0.0), axis=0)
        prefix = tl.where(acc >= target, cand, prefix)
    return prefix


@triton.jit
def _filter_threshold(zt_row, za_row, V, filter_k, log_r, MODE: tl.constexpr, BLOCK: tl.constexpr):
    """ULD: min(max z_t + log r, k-th largest z_t); other modes: unused (−inf)."""
    thr = tl.full([], float("-inf"), tl.float32)
    if MODE == 1:
        mx = tl.full([], float("-inf"), tl.float32)
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            zt = tl.load(zt_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
            mx = tl.maximum(mx, tl.max(zt, axis=0))
        kth = _unkey(_radix_select(zt_row, zt_row, V, 0.0, 0.0, 0.0, 1.0, 0.0, filter_k, MODE, 0, BLOCK))
        thr = tl.minimum(mx + log_r, kth)
    return thr


@triton.jit
def _max_and_first_arg(zt_row, za_row, V, w, thr, MODE: tl.constexpr, BLOCK: tl.constexpr):
    cmax = tl.full([], float("-inf"), tl.float32)
    arg = tl.zeros([], tl.int64)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        c = _combined(zt_row, za_row, cols, V, w, thr, MODE)
        m = tl.max(c, axis=0)
        a = tl.min(tl.where(c == m, cols, V), axis=0).to(tl.int64)
        better = m > cmax  # strictly: an earlier chunk keeps a tie
        arg = tl.where(better, a, arg)
        cmax = tl.where(better, m, cmax)
    return cmax, arg


@triton.jit
def _logit_diff_sample_kernel(
    zt_ptr,  # [B, V] fp32 / bf16 / fp16 target logits, unit stride along V
    za_ptr,  # [B, V] assistant logits (same dtype; the target again for MODE 0)
    tok_ptr,  # [B] int64 out
    lp_ptr,  # [B] fp32 out: log-prob of the token under the filtered distribution
    V, row_stride, w, filter_k, log_r, T, top_k, top_p, seed, offset,
    MODE: tl.constexpr, GREEDY: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    zt_row = zt_ptr + row * row_stride
    za_row = za_ptr + row * row_stride
    thr = _filter_threshold(zt_row, za_row, V, filter_k, log_r, MODE, BLOCK)
    cmax, arg = _max_and_first_arg(zt_row, za_row, V, w, thr, MODE, BLOCK)
    smax = cmax / T
    kth_c = tl.full([], float("-inf"), tl.float32)
    if (top_k > 0) & (top_k < V):
        kth_c = _unkey(_radix_select(zt_row, za_row, V, w, thr, 0.0, T, smax, top_k, MODE, 1, BLOCK))
    cut = tl.zeros([], tl.int64)
    if top_p < 1.0:
        total = tl.zeros([], tl.float32)
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            _, wt = _key_weight(zt_row, za_row, cols, V, w, thr, kth_c, T, smax, MODE, 2)
            total += tl.sum(wt, axis=0)
        cut = _radix_select(zt_row, za_row, V, w, thr, kth_c, T, smax, top_p * total, MODE, 2, BLOCK)
    z = tl.zeros([], tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        key, wt = _key_weight(zt_row, za_row, cols, V, w, thr, kth_c, T, smax, MODE, 2)
        z += tl.sum(tl.where(key >= cut, wt, 0.0), axis=0)
    log_z = tl.log(z)
    tok = arg
    if not GREEDY:
        # int arguments may arrive as i32 or constexpr (Triton specializes small values): widen first.
        seed64 = (seed + tl.zeros([], tl.int64)).to(tl.uint64)
        stream = _splitmix64(seed64 + _u64(0x9E3779B9, 0x7F4A7C15) * (offset + row).to(tl.uint64))
        best = tl.full([], float("-inf"), tl.float32)
        tok = tl.zeros([], tl.int64)
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            c = _combined(zt_row, za_row, cols, V, w, thr, MODE)
            s = c / T
            kept = (cols < V) & (c > float("-inf")) & (c >= kth_c) & (_key(s) >= cut)
            x = _splitmix64(stream + cols.to(tl.uint64))
            u = ((x >> 40).to(tl.float32) + 0.5) * 5.9604644775390625e-8
            g = -tl.log(-tl.log(u))
            score = tl.where(kept, ((s - smax) - log_z) + g, float("-inf"))
            m = tl.max(score, axis=0)
            a = tl.min(tl.where(score == m, cols, V), axis=0).to(tl.int64)
            better = m > best
            tok = tl.where(better, a, tok)
            best = tl.where(better, m, best)
    # log-prob of the chosen token: (s − smax) − log Σ (NaN when nothing is kept, as log_softmax).
    lp = tl.zeros([], tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        c = _combined(zt_row, za_row, cols, V, w, thr, MODE)
        s = c / T
        kept = (c > float("-inf")) & (c >= kth_c) & (_key(s) >= cut)
        s = tl.where(kept, s, float("-inf"))
        lp += tl.sum(tl.where(cols == tok, (s - smax) - log_z, 0.0), axis=0)
    tl.store(tok_ptr + row, tok)
    tl.store(lp_ptr + row, lp)


@triton.jit
def _logit_diff_logprobs_kernel(
    zt_ptr,  # [N, V] target logits, unit stride along V
    za_ptr,  # [N, V] assistant logits (the target again for MODE 0)
    out_ptr,  # [N, V] fp32 out: log_softmax(c / T)
    V, row_stride, w, filter_k, log_r, T,
    MODE: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    zt_row = zt_ptr + row * row_stride
    za_row = za_ptr + row * row_stride
    thr = _filter_threshold(zt_row, za_row, V, filter_k, log_r, MODE, BLOCK)
    cmax, _ = _max_and_first_arg(zt_row, za_row, V, w, thr, MODE, BLOCK)
    smax = cmax / T
    z = tl.zeros([], tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        c = _combined(zt_row, za_row, cols, V, w, thr, MODE)
        z += tl.sum(tl.exp(c / T - smax), axis=0)
    log_z = tl.log(z)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        c = _combined(zt_row, za_row, cols, V, w, thr, MODE)
        tl.store(out_ptr + row * V + cols, (c / T - smax) - log_z, mask=cols < V)


def _scalars(vocab: int, relative_top: float) -> tuple[int, float]:
    """(k = max(1, ⌊r·V⌋), log r rounded to fp32) as the reference computes them."""
    return max(1, math.floor(relative_top * vocab)), float(torch.tensor(math.log(relative_top), dtype=torch.float32))


def _launch_options(device: torch.device) -> dict:
    # FP fusion would compute z_t − w·z_a as one FMA (one rounding) where the reference rounds twice.
    return {} if device.type == "cpu" else {"enable_fp_fusion": False}


def logit_diff_sample_triton(target, assistant, mode: int, weight: float, relative_top: float, temperature: float,
                             top_k: int, top_p: float, greedy: bool, seed: int, offset: int):
    """(tokens int64 [B], log-prob fp32 [B]); target / assistant [B, V] contiguous, assistant None for mode 0."""
    rows, vocab = target.shape
    other = target if assistant is None or mode == 0 else assistant
    tokens = torch.empty(rows, dtype=torch.int64, device=target.device)
    logprob = torch.empty(rows, dtype=torch.float32, device=target.device)
    if rows:
        filter_k, log_r = _scalars(vocab, relative_top)
        _logit_diff_sample_kernel[(rows,)](
            target, other, tokens, logprob, vocab, target.stride(0), float(weight), filter_k, log_r,
            float(temperature), int(top_k), float(top_p), int(seed), int(offset),
            MODE=0 if assistant is None else int(mode), GREEDY=bool(greedy), BLOCK=_BLOCK,
            **_launch_options(target.device))
    return tokens, logprob


def logit_diff_logprobs_triton(target, assistant, mode: int, weight: float, relative_top: float,
                               temperature: float):
    """fp32 [..., V] log_softmax(c / T); target / assistant [..., V] contiguous."""
    vocab = target.shape[-1]
    zt = target.reshape(-1, vocab)
    za = zt if assistant is None or mode == 0 else assistant.reshape(-1, vocab)
    out = torch.empty(target.shape, dtype=torch.float32, device=target.device)
    if zt.shape[0]:
        filter_k, log_r = _scalars(vocab, relative_top)
        _logit_diff_logprobs_kernel[(zt.shape[0],)](
            zt, za, out, vocab, zt.stride(0), float(weight), filter_k, log_r, float(temperature),
            MODE=0 if assistant is None else int(mode), BLOCK=_BLOCK, **_launch_options(target.device))
    return out
