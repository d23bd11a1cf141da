"""Selective synaptic dampening (SSD) as one multi-tensor op.

Foster, Schoepf, Brintrup, "Fast Machine Unlearning Without Retraining Through Selective Synaptic
Dampening", AAAI 2024. For every parameter element with forget importance I_f and full-data
importance I_D (both fp32, e.g. diagonal Fisher estimates):

    selected  <=>  I_f > alpha * I_D
    theta     <-   theta * min(lam * I_D / I_f, 1)      where selected   (never amplifies)

NaN/Inf policy (no error, no extra pass): a NaN importance never selects (theta unchanged);
I_f = +inf selects and zeroes theta (the limit of the formula); I_D = +inf never selects;
I_f = 0 or I_D = 0 produces no NaN and no change the formula does not ask for.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from unlearnx import _native
from unlearnx.ops import _checks

__all__ = ["ssd_dampen_", "ssd_dampen_reference"]

_PARAM_DTYPES = (torch.float32, torch.bfloat16)


def ssd_dampen_reference(
    params: list[torch.Tensor],
    forget_importance: list[torch.Tensor],
    full_importance: list[torch.Tensor],
    alpha: float,
    lam: float,
) -> torch.Tensor:
    """Pure-PyTorch SSD, tensor by tensor; bit-identical to the native kernels."""
    device = params[0].device if params else torch.device("cpu")
    count = torch.zeros((), dtype=torch.int64, device=device)
    for p, f, d in zip(params, forget_importance, full_importance):
        sel = f > alpha * d
        ratio = lam * d / f
        factor = torch.where(ratio < 1, ratio, torch.ones((), dtype=ratio.dtype, device=ratio.device))
        # p * factor is computed in fp32 (type promotion) and rounded once on the copy back,
        # exactly as the native kernels do for bf16 parameters.
        p.copy_(torch.where(sel, p * factor, p))
        count += sel.sum()
    return count


def _validate(params, forget_importance, full_importance, alpha, lam):
    params = _checks.tensor_list(params, "params")
    forget_importance = _checks.tensor_list(forget_importance, "forget_importance")
    full_importance = _checks.tensor_list(full_importance, "full_importance")
    _checks.same_length(params, "params", forget_importance, "forget_importance")
    _checks.same_length(params, "params", full_importance, "full_importance")
    alpha = _checks.finite_scalar(alpha, "alpha", min_value=0.0)
    lam = _checks.finite_scalar(lam, "lam", min_value=0.0)
    for i, (p, f, d) in enumerate(zip(params, forget_importance, full_importance)):
        _checks.dtype_in(p, f"params[{i}]", _PARAM_DTYPES)
        if p.dtype != params[0].dtype:
            raise TypeError(f"params[{i}] is {p.dtype} but params[0] is {params[0].dtype}; all params must share one dtype")
        _checks.dtype_in(f, f"forget_importance[{i}]", (torch.float32,))
        _checks.dtype_in(d, f"full_importance[{i}]", (torch.float32,))
        _checks.same_shape(p, f"params[{i}]", f, f"forget_importance[{i}]")
        _checks.same_shape(p, f"params[{i}]", d, f"full_importance[{i}]")
        _checks.same_device(p, f"params[{i}]", params[0], "params[0]")
        _checks.same_device(f, f"forget_importance[{i}]", params[0], "params[0]")
        _checks.same_device(d, f"full_importance[{i}]", params[0], "params[0]")
    return params, forget_importance, full_importance, alpha, lam


@torch.no_grad()
def ssd_dampen_(
    params: Sequence[torch.Tensor],
    forget_importance: Sequence[torch.Tensor],
    full_importance: Sequence[torch.Tensor],
    *,
    alpha: float = 10.0,
    lam: float = 1.0,
) -> torch.Tensor:
    """Dampen, in place, the parameters that matter far more to the forget set than to all data.

    Args:
        params: parameter tensors (fp32 or bf16, one dtype), modified in place.
        forget_importance: I_f per parameter, fp32, same shapes (e.g. Fisher diagonal on D_f).
        full_importance: I_D per parameter, fp32, same shapes (Fisher diagonal on D).
        alpha: selection weighting (paper default 10 for ResNet-18, 5 for ViT).
        lam: dampening constant lambda (paper default 1).

    Returns:
        0-dim int64 tensor on the params' device: the number of dampened elements (no host sync).

    Implements theta <- theta * min(lam * I_D / I_f, 1) where I_f > alpha * I_D, over the whole list
    in one call (one multi-tensor launch on CUDA).
    """
    params, forget_importance, full_importance, alpha, lam = _validate(
        params, forget_importance, full_importance, alpha, lam
    )
    forget_importance = [t.contiguous() for t in forget_importance]
    full_importance = [t.contiguous() for t in full_importance]
    # Kernels need dense parameters; strided ones are dampened through a dense copy and copied back.
    dense = [p if p.is_contiguous() else p.contiguous() for p in params]
    if not params:  # nothing to dampen (the dispatcher cannot route an op with no tensors)
        return torch.zeros((), dtype=torch.int64)
    device = params[0].device
    backend = _native.select_backend(device, op="ssd_dampen_")
    if backend == "native":
        count = torch.ops.unlearnx.ssd_dampen_(dense, forget_importance, full_importance, alpha, lam)
    elif backend == "triton":
        from unlearnx.kernels.ssd import ssd_dampen_triton

        count = ssd_dampen_triton(dense, forget_importance, full_importance, alpha, lam)
    else:
        count = ssd_dampen_reference(dense, forget_importance, full_importance, alpha, lam)
    for p, q in zip(params, dense):
        if p is not q:
            p.copy_(q)
    return count


# Registered by unlearnx.ops.registry (with the CPU / CUDA kernels the native library lacks).
def _ssd_dampen_fake(params, forget_importance, full_importance, alpha, lam):
    device = params[0].device if params else torch.device("cpu")
    return torch.empty((), dtype=torch.int64, device=device)
