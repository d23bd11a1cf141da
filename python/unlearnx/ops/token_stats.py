"""Per-token softmax statistics for LM losses and membership-inference attacks, in one pass.

For logits z [..., V] and integer labels y [...], per token (p = softmax(z), fp32 accumulation):

    logp_label = log p_y = z_y - logsumexp(z)
    mu         = sum_v p_v log p_v                        (minus the entropy)
    var        = sum_v p_v (log p_v)^2 - mu^2

mu and var are the moments Min-K%++ (Zhang et al., 2024, "Min-K%++: Improved Baseline for Detecting
Pre-Training Data from Large Language Models") normalizes log p_y with; -logp_label is the token
NLL. The kernels never materialize log_softmax over the vocabulary: each row is read once in
chunks with an online max and rescaled sums (csrc/include/unlearnx/token_stats.h).

Tokens with labels == ignore_index get 0 in all three outputs; the valid flag is
`labels != ignore_index`. -inf logits are probability-0 entries (they contribute 0); NaN or +inf
logits give NaN outputs, as log_softmax does. Autograd flows to `logits` through logp_label only
(d logp_y / dz = onehot(y) - softmax(z)); mu and var are returned without gradient.
"""
from __future__ import annotations

import torch

from unlearnx import _native
from unlearnx.ops import _checks

__all__ = ["token_stats", "token_stats_reference"]

_LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def token_stats_reference(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
    """Pure-PyTorch token_stats through log_softmax (materializes [..., V]; tests and fallback).

    Computes and returns fp32 (fp64 for fp64 logits), shaped like labels.
    """
    work = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logp_all = work.log_softmax(-1)
    valid = labels != ignore_index
    logp = logp_all.gather(-1, torch.where(valid, labels, 0).unsqueeze(-1)).squeeze(-1)
    p = logp_all.exp()
    # -inf log-probs (p = 0) are clamped so p * log p is 0 * finite = 0, not NaN.
    safe = logp_all.clamp(min=torch.finfo(work.dtype).min / 4)
    mu = (p * safe).sum(-1)
    # Centered second pass: Σ p (log p − μ)² does not cancel the way Σ p (log p)² − μ² does in fp32
    # (for a uniform row over 1000 tokens that difference alone is off by 3e-5).
    dev = torch.where(p > 0, logp_all - mu.unsqueeze(-1), torch.zeros((), dtype=work.dtype, device=work.device))
    var = (p * dev * dev).sum(-1)
    zero = torch.zeros((), dtype=work.dtype, device=work.device)
    return tuple(torch.where(valid, t, zero) for t in (logp, mu, var))


def _validate(logits, labels, ignore_index):
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    _checks.dtype_in(logits, "logits", _LOGIT_DTYPES)
    _checks.dtype_in(labels, "labels", (torch.int64,))
    _checks.same_device(labels, "labels", logits, "logits")
    if labels.dim() < 1 or logits.dim() != labels.dim() + 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits must be [..., V] with labels [...] (e.g. [N, V] and [N], or [B, T, V] and "
                         f"[B, T]); got logits {list(logits.shape)} and labels {list(labels.shape)}")
    vocab = logits.shape[-1]
    if vocab == 0 and labels.numel():
        raise ValueError("logits has an empty vocabulary dimension")
    # One reduction over the labels (a host sync on CUDA, negligible next to reading the logits);
    # skipped while tracing, where the native CPU op still rejects bad labels.
    if labels.numel() and not torch.compiler.is_compiling():
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
        if bool(bad.any()):
            first = int(labels[bad][0])
            raise ValueError(f"labels contains {first}, outside [0, {vocab}) and not ignore_index={ignore_index}")


def token_stats(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100):
    """Per-token log p(label), mu = sum_v p log p and var = sum_v p (log p)^2 - mu^2 of softmax(logits).

    Args:
        logits: [..., V] float32, bfloat16, float16 (native kernels) or float64 (reference path);
            any strides (a non-contiguous input is copied once).
        labels: [...] int64 token ids in [0, V), or ignore_index.
        ignore_index: label value that marks tokens to skip (outputs 0 there).
    Returns:
        (logp_label, mu, var): three float32 tensors shaped like labels (float64 for float64
        logits, which run the fp64 reference so gradcheck can use them). logp_label is
        differentiable w.r.t. logits (grad = upstream * (onehot(label) - softmax(logits))).

    For a causal LM, score next tokens without slicing the logits:
        shifted = torch.cat([labels[:, 1:], labels.new_full((B, 1), -100)], 1)
        logp, mu, var = token_stats(logits, shifted)      # logits [B, T, V]
    """
    _validate(logits, labels, ignore_index)
    backend = _native.select_backend(logits.device, op="token_stats")
    if backend == "native" and logits.dtype in _NATIVE_DTYPES:
        return torch.ops.unlearnx.token_stats(logits.contiguous(), labels.contiguous(), ignore_index)
    if backend == "triton" and logits.dtype != torch.float64:
        if not (torch.is_grad_enabled() and logits.requires_grad):
            from unlearnx.kernels.token_stats import token_stats_triton

            return token_stats_triton(logits.contiguous(), labels.contiguous(), ignore_index)
        if logits.is_cuda and _native.native_loaded():
            # Through the op: its autograd formula around its CUDA kernel (registered by
            # unlearnx.ops.registry, which runs the same Triton kernel).
            return torch.ops.unlearnx.token_stats(logits.contiguous(), labels.contiguous(), ignore_index)
    # The reference is plain autograd-aware PyTorch (also what fp64 and grad-needing Triton calls
    # without the native library use).
    return token_stats_reference(logits, labels, ignore_index)


def _token_stats_backward(ctx, grad_logp, grad_mu, grad_var):
    logits, labels = ctx.saved_tensors
    valid = labels != ctx.ignore_index
    g = torch.where(valid, grad_logp.float(), 0.0).unsqueeze(-1)
    # d log p_y / dz = onehot(y) - softmax(z); ignored tokens (g = 0) scatter into index 0 harmlessly.
    grad = -g * torch.softmax(logits.float(), dim=-1)
    grad.scatter_add_(-1, torch.where(valid, labels, 0).unsqueeze(-1), g)
    return grad.to(logits.dtype), None, None


def _token_stats_setup_context(ctx, inputs, output):
    logits, labels, ignore_index = inputs
    ctx.save_for_backward(logits, labels)
    ctx.ignore_index = ignore_index
    ctx.mark_non_differentiable(output[1], output[2])


# Registered by unlearnx.ops.registry (with the CPU / CUDA kernels the native library lacks).
def _token_stats_fake(logits, labels, ignore_index=-100):
    torch._check(logits.dim() == labels.dim() + 1, lambda: "logits must be [..., V] with labels [...]")
    return tuple(torch.empty(labels.shape, dtype=torch.float32, device=logits.device) for _ in range(3))
