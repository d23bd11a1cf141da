"""Triton kernels for the Linear gradient statistics: the GPU path when the native CUDA kernel is
not compiled.

One program owns a [BLOCK_O, BLOCK_I] tile of the output and loops over the samples; for each
sample it accumulates P_b = G_b^T X_b over T in registers (tl.dot, fp32) and then squares it into
the tile (MODE 0), adds it (MODE 1) or adds ||P_b||^2 to norms[b] (MODE 2, one atomic per tile and
sample). No per-sample gradient is written to memory.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MODE_SQUARE, MODE_ADD, MODE_NORM = 0, 1, 2


@triton.jit
def _linear_tile_kernel(
    x_ptr,  # [B, T, d_in] fp32 or bf16, contiguous
    g_ptr,  # [B, T, d_out] same dtype as x, contiguous
    f_ptr,  # [d_out, d_in] fp32 accumulator (MODE 0, 1)
    w_ptr,  # [d_out, d_in] fp32 gradient accumulator (MODE 0 with HAS_GRAD)
    n_ptr,  # [B] fp32 squared-norm accumulator (MODE 2)
    B,
    T,
    d_in,
    d_out,
    MODE: tl.constexpr,
    HAS_GRAD: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    offs_o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask_o = offs_o < d_out
    mask_i = offs_i < d_in
    tile = offs_o[:, None].to(tl.int64) * d_in + offs_i[None, :]
    tile_mask = mask_o[:, None] & mask_i[None, :]
    f = tl.zeros((BLOCK_O, BLOCK_I), tl.float32)
    w = tl.zeros((BLOCK_O, BLOCK_I), tl.float32)
    # per-sample base pointers advance by one sample each step (64-bit pointer arithmetic, no
    # b * T * d product that could overflow int32)
    xb = x_ptr
    gb = g_ptr
    for b in range(0, B):
        acc = tl.zeros((BLOCK_O, BLOCK_I), tl.float32)
        for t0 in range(0, T, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            mask_t = offs_t < T
            g = tl.load(gb + offs_t[None, :] * d_out + offs_o[:, None], mask=mask_o[:, None] & mask_t[None, :], other=0.0)
            x = tl.load(xb + offs_t[:, None] * d_in + offs_i[None, :], mask=mask_t[:, None] & mask_i[None, :], other=0.0)
            if IEEE:
                acc += tl.dot(g, x, input_precision="ieee")
            else:
                acc += tl.dot(g, x)
        if MODE == 0:
            f += acc * acc
            if HAS_GRAD:
                w += acc
        elif MODE == 1:
            f += acc
        else:
            tl.atomic_add(n_ptr + b, tl.sum(tl.sum(acc * acc, axis=1), axis=0))
        xb += T * d_in
        gb += T * d_out
    if MODE != 2:
        tl.store(f_ptr + tile, tl.load(f_ptr + tile, mask=tile_mask, other=0.0) + f, mask=tile_mask)
    if HAS_GRAD:
        tl.store(w_ptr + tile, tl.load(w_ptr + tile, mask=tile_mask, other=0.0) + w, mask=tile_mask)


def _blocks(x: torch.Tensor, T: int) -> tuple[int, int, int]:
    if x.is_cuda:
        return 64, 64, 32
    return 16, 16, 16  # the interpreter: tiny tiles (tl.dot needs >= 16)


def linear_tiles_triton(mode: int, x: torch.Tensor, g: torch.Tensor, f: torch.Tensor | None,
                        w: torch.Tensor | None, norms: torch.Tensor | None) -> None:
    """Runs the tile kernel on contiguous x [B, T, d_in], g [B, T, d_out] (fp32, or bf16 on CUDA)."""
    B, T, d_in = x.shape
    d_out = g.shape[2]
    if B == 0 or T == 0 or d_in == 0 or d_out == 0:
        return
    bo, bi, bt = _blocks(x, T)
    dummy = f if f is not None else norms
    grid = (triton.cdiv(d_out, bo), triton.cdiv(d_in, bi))
    _linear_tile_kernel[grid](
        x, g, f if f is not None else dummy, w if w is not None else dummy, norms if norms is not None else dummy,
        B, T, d_in, d_out, MODE=mode, HAS_GRAD=w is not None, IEEE=x.dtype == torch.float32,
        BLOCK_O=bo, BLOCK_I=bi, BLOCK_T=bt,
    )


def _triton_inputs(x: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # [B, d] -> [B, 1, d]. The interpreter has no bf16; on CUDA bf16 goes to tl.dot directly
    # (fp32 accumulation).
    X = (x.unsqueeze(1) if x.dim() == 2 else x).contiguous()
    G = (grad_out.unsqueeze(1) if grad_out.dim() == 2 else grad_out).contiguous()
    if not X.is_cuda:
        X, G = X.float(), G.float()
    return X, G


def linear_sq_grad_accum_triton(fisher: torch.Tensor, x: torch.Tensor, grad_out: torch.Tensor,
                                fisher_bias: torch.Tensor | None = None,
                                grad_weight: torch.Tensor | None = None) -> None:
    """unlearnx::linear_sq_grad_accum_ on Triton (the op's schema; dense fp32 accumulators)."""
    X, G = _triton_inputs(x, grad_out)
    if X.shape[1] == 1:
        # sum_b (g_b x_b^T)^2 = (G^2)^T (X^2): the samples become the reduction axis.
        Xs, Gs = X.float().transpose(0, 1).contiguous(), G.float().transpose(0, 1).contiguous()
        linear_tiles_triton(MODE_ADD, Xs * Xs, Gs * Gs, fisher, None, None)
        if grad_weight is not None:
            linear_tiles_triton(MODE_ADD, Xs, Gs, grad_weight, None, None)
    else:
        linear_tiles_triton(MODE_SQUARE, X, G, fisher, grad_weight, None)
    if fisher_bias is not None:
        fisher_bias.add_(G.float().sum(1).square().sum(0))


def linear_grad_sq_norm_accum_triton(norms: torch.Tensor, x: torch.Tensor, grad_out: torch.Tensor,
                                     bias: bool = False) -> None:
    """unlearnx::linear_grad_sq_norm_accum_ on Triton: the Gram form (two batched GEMMs) when
    2 T^2 < d_in d_out, else the tile kernel."""
    X, G = _triton_inputs(x, grad_out)
    T, d_in, d_out = X.shape[1], X.shape[2], G.shape[2]
    if 2 * T * T < d_in * d_out:
        Xf, Gf = X.float(), G.float()
        norms.add_((torch.bmm(Gf, Gf.transpose(1, 2)) * torch.bmm(Xf, Xf.transpose(1, 2))).sum((1, 2)))
    else:
        linear_tiles_triton(MODE_NORM, X, G, None, None, norms)
    if bias:
        norms.add_(G.float().sum(1).square().sum(1))
