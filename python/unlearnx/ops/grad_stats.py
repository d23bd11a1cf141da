"""Per-sample gradient statistics of Linear layers, without per-sample gradients in memory.

For a Linear layer applied to X [B, T, d_in] (or [B, d_in], T = 1) with output gradients
G [B, T, d_out], where row b of G is the gradient of sample b's own loss, the gradient of sample
b's loss with respect to the weight is the tile P_b = G_b^T X_b [d_out, d_in]. The ops accumulate

    linear_sq_grad_accum_:       fisher      += sum_b P_b^2                (elementwise)
                                 fisher_bias += sum_b (sum_t G_b,t)^2      (optional)
                                 grad_weight += sum_b P_b                  (optional, same pass)
    linear_grad_sq_norm_accum_:  norms[b]    += ||P_b||_F^2 (+ ||sum_t G_b,t||^2 with bias)

For T = 1, sum_b P_b^2 = (G^2)^T (X^2), one GEMM. For the norms, ||P_b||^2 =
sum_{t,s} (G_t . G_s)(X_t . X_s) (the Gram form) when 2 T^2 < d_in d_out, else tile by tile.
The kernels hold one tile of one sample in registers (CPU) or one program's tile (Triton), so
memory stays O(d_in d_out), never B x. Accumulators are fp32; x and grad_out may be bf16.
These are the kernels of unlearnx.stats (Fisher diagonal, per-sample gradient norms).
"""
from __future__ import annotations

import torch

from unlearnx import _native
from unlearnx.ops import _checks

__all__ = [
    "linear_sq_grad_accum_",
    "linear_sq_grad_accum_reference",
    "linear_grad_sq_norm_accum_",
    "linear_grad_sq_norm_accum_reference",
]

_IN_DTYPES = (torch.float32, torch.bfloat16)


def _as3d(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(1) if t.dim() == 2 else t


def linear_sq_grad_accum_reference(fisher, x, grad_out, fisher_bias=None, grad_weight=None) -> None:
    """Pure-PyTorch definition, one sample at a time (O(d_in d_out) memory), fp32."""
    X, G = _as3d(x).float(), _as3d(grad_out).float()
    for b in range(X.shape[0]):
        P = G[b].T @ X[b]
        fisher.addcmul_(P, P)
        if grad_weight is not None:
            grad_weight.add_(P)
    if fisher_bias is not None:
        fisher_bias.add_(G.sum(1).square().sum(0))


def linear_grad_sq_norm_accum_reference(norms, x, grad_out, bias=False) -> None:
    """Pure-PyTorch definition: norms[b] += ||G_b^T X_b||^2 (+ ||sum_t G_b,t||^2), fp32."""
    X, G = _as3d(x).float(), _as3d(grad_out).float()
    for b in range(X.shape[0]):
        norms[b] += (G[b].T @ X[b]).square().sum()
    if bias:
        norms.add_(G.sum(1).square().sum(1))


def _check_linear(x, grad_out) -> tuple[int, int, int, int]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(grad_out, torch.Tensor):
        raise TypeError(f"grad_out must be a torch.Tensor, got {type(grad_out).__name__}")
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be [B, d_in] or [B, T, d_in], got shape {list(x.shape)}")
    if grad_out.dim() != x.dim() or grad_out.shape[: x.dim() - 1] != x.shape[: x.dim() - 1]:
        raise ValueError(
            f"grad_out has shape {list(grad_out.shape)} but x has shape {list(x.shape)} "
            "(both [B, d] or both [B, T, d] with the same B and T)"
        )
    _checks.dtype_in(x, "x", _IN_DTYPES)
    if grad_out.dtype != x.dtype:
        raise TypeError(f"grad_out is {grad_out.dtype} but x is {x.dtype}; they must match")
    _checks.same_device(grad_out, "grad_out", x, "x")
    B = x.shape[0]
    T = x.shape[1] if x.dim() == 3 else 1
    return B, T, x.shape[-1], grad_out.shape[-1]


def _check_acc(t, name: str, shape: tuple[int, ...], x: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _checks.dtype_in(t, name, (torch.float32,))
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {list(t.shape)} but must be {list(shape)}")
    _checks.same_device(t, name, x, "x")


def _dense(t):
    return t if t is None or t.is_contiguous() else t.contiguous()


def _copy_back(pairs) -> None:
    for orig, dense in pairs:
        if orig is not None and orig is not dense:
            orig.copy_(dense)


@torch.no_grad()
def linear_sq_grad_accum_(
    fisher: torch.Tensor,
    x: torch.Tensor,
    grad_out: torch.Tensor,
    *,
    fisher_bias: torch.Tensor | None = None,
    grad_weight: torch.Tensor | None = None,
) -> None:
    """Accumulate the per-sample squared weight gradients of a Linear layer into `fisher`.

    Args:
        fisher: [d_out, d_in] fp32, in place: += sum_b (sum_t G[b,t,:]^T X[b,t,:])^2.
        x: layer input, [B, T, d_in] or [B, d_in] (T = 1), fp32 or bf16.
        grad_out: gradient of the per-sample losses w.r.t. the layer output, [B, T, d_out] or
            [B, d_out], dtype of x. Row b must be the gradient of sample b's own loss.
        fisher_bias: optional [d_out] fp32, += sum_b (sum_t G[b,t,:])^2.
        grad_weight: optional [d_out, d_in] fp32, += sum_b G_b^T X_b (the ordinary gradient of the
            summed loss), computed in the same pass.

    No per-sample gradient is written to memory. Padding positions need no mask: their rows of G
    are zero when the loss ignores them, so they add nothing.
    """
    B, T, d_in, d_out = _check_linear(x, grad_out)
    _check_acc(fisher, "fisher", (d_out, d_in), x)
    if fisher_bias is not None:
        _check_acc(fisher_bias, "fisher_bias", (d_out,), x)
    if grad_weight is not None:
        _check_acc(grad_weight, "grad_weight", (d_out, d_in), x)
    F, FB, GW = _dense(fisher), _dense(fisher_bias), _dense(grad_weight)
    backend = _native.select_backend(x.device, op="linear_sq_grad_accum_")
    if backend == "native":
        torch.ops.unlearnx.linear_sq_grad_accum_(F, x, grad_out, FB, GW)
    elif backend == "triton":
        from unlearnx.kernels.grad_stats import linear_sq_grad_accum_triton

        linear_sq_grad_accum_triton(F, x, grad_out, FB, GW)
    else:
        linear_sq_grad_accum_reference(F, x, grad_out, FB, GW)
    _copy_back([(fisher, F), (fisher_bias, FB), (grad_weight, GW)])


@torch.no_grad()
def linear_grad_sq_norm_accum_(
    norms: torch.Tensor, x: torch.Tensor, grad_out: torch.Tensor, *, bias: bool = False
) -> None:
    """Accumulate each sample's squared weight-gradient norm of a Linear layer into `norms`.

    Args:
        norms: [B] fp32, in place: norms[b] += ||G_b^T X_b||_F^2 (+ ||sum_t G[b,t,:]||^2 if bias).
        x: layer input, [B, T, d_in] or [B, d_in], fp32 or bf16.
        grad_out: per-sample output gradients, [B, T, d_out] or [B, d_out], dtype of x.
        bias: also add the bias gradient's squared norm.

    Uses ||G_b^T X_b||^2 = sum_{t,s} (G_t . G_s)(X_t . X_s) when 2 T^2 < d_in d_out, else the
    explicit tile, never stored.
    """
    B, T, d_in, d_out = _check_linear(x, grad_out)
    _check_acc(norms, "norms", (B,), x)
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
    N = _dense(norms)
    backend = _native.select_backend(x.device, op="linear_grad_sq_norm_accum_")
    if backend == "native":
        torch.ops.unlearnx.linear_grad_sq_norm_accum_(N, x, grad_out, bias)
    elif backend == "triton":
        from unlearnx.kernels.grad_stats import linear_grad_sq_norm_accum_triton

        linear_grad_sq_norm_accum_triton(N, x, grad_out, bias)
    else:
        linear_grad_sq_norm_accum_reference(N, x, grad_out, bias)
    _copy_back([(norms, N)])


# Registered by unlearnx.ops.registry (with the CPU / CUDA kernels the native library lacks).
def _linear_sq_grad_accum_fake(fisher, x, grad_out, fisher_bias=None, grad_weight=None):
    return None


def _linear_grad_sq_norm_accum_fake(norms, x, grad_out, bias=False):
    return None
