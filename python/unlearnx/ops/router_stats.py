"""Mixture-of-experts router statistics, accumulated in place with no one_hot and no host sync.

For router logits z [T, E] of one MoE layer, top-k and a per-token flag f [T] (0 = ignore, e.g.
padding; 1 = forget; 2 = retain), per token (fp32): p = softmax(z), S = the k experts with the
largest p, gate weight w_e = p_e / sum_{j in S} p_j with ``normalize_topk`` (Qwen2-MoE / Mixtral
``norm_topk_prob=True``) else p_e. For group g in {forget, retain} (row g = f - 1) and expert e:

    stats[g, e, 0] += #{t : f_t = g+1, e in S_t}            (tokens routed to e)
    stats[g, e, 1] += sum_{t : f_t = g+1, e in S_t} w_{t,e}  (gate weight)
    stats[g, e, 2] += sum_{t : f_t = g+1} p_{t,e}            (router probability)
    stats[g, e, 3] += sum_{t : f_t = g+1} p_{t,e}^2

The kernels rank p as Hugging Face's routers do (softmax, then top-k of the probabilities). Ties
go to the lower expert index (the reference uses a stable sort for the same rule). torch.topk's
order among equal values is unspecified (on CPU, topk([.1, .3, .3, .3], 2) returns indices 1 and
3), so on an exact tie straddling the k-th place the counts can differ from a torch.topk router
(Hugging Face's) while the gate-weight values summed are identical; ties need equal fp32
probabilities, which bf16 logits make common.

CPU: tokens split into fixed chunks of 2048 with fp64 partials summed in chunk order
(deterministic); the GPU path (Triton) uses float atomics (order not fixed). Flag values outside
{0, 1, 2} are rejected on CPU; on GPU they are ignored (checking would need a host sync).
"""
from __future__ import annotations

import torch

from unlearnx import _native
from unlearnx.ops import _checks

__all__ = ["moe_router_stats_", "moe_router_stats_reference", "router_stats_buffer"]

_LOGIT_DTYPES = (torch.float32, torch.bfloat16)


def router_stats_buffer(num_experts: int, device=None) -> torch.Tensor:
    """A zeroed fp32 [2, num_experts, 4] accumulator for `moe_router_stats_`."""
    if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts must be a positive int, got {num_experts!r}")
    return torch.zeros(2, num_experts, 4, dtype=torch.float32, device=device)


def moe_router_stats_reference(logits: torch.Tensor, flags: torch.Tensor, top_k: int,
                               normalize_topk: bool = True) -> torch.Tensor:
    """The Hugging Face-style path (softmax, top-k, one_hot, masked sums): the [2, E, 4] increment.

    logits [T, E], flags [T]; returns fp32 (fp64 for fp64 logits). Materializes [T, k, E].
    """
    work = logits.to(torch.promote_types(logits.dtype, torch.float32))
    probs = work.softmax(-1)
    # A stable descending sort puts the lower index first among equal probabilities (the kernels'
    # tie rule); torch.topk's order among ties is unspecified.
    top_v, top_i = (t[..., :top_k] for t in torch.sort(probs, dim=-1, descending=True, stable=True))
    if normalize_topk:
        top_v = top_v / top_v.sum(-1, keepdim=True)
    hot = torch.nn.functional.one_hot(top_i, logits.shape[-1]).to(work.dtype)  # [T, k, E]
    count = hot.sum(1)
    gate = (hot * top_v.unsqueeze(-1)).sum(1)
    per_token = torch.stack([count, gate, probs, probs * probs], -1)  # [T, E, 4]
    return torch.stack([per_token[flags == g].sum(0) for g in (1, 2)])


def _validate(stats, logits, flags, top_k, normalize_topk):
    for name, t in (("stats", stats), ("logits", logits), ("flags", flags)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int, got {top_k!r}")
    if not isinstance(normalize_topk, bool):
        raise TypeError(f"normalize_topk must be a bool, got {normalize_topk!r}")
    _checks.dtype_in(logits, "logits", _LOGIT_DTYPES + (torch.float64,))
    _checks.dtype_in(stats, "stats", (torch.float32, torch.float64))
    if flags.dtype.is_floating_point or flags.dtype.is_complex:
        raise TypeError(f"flags must be an integer or bool tensor (0 ignore, 1 forget, 2 retain), got {flags.dtype}")
    _checks.same_device(flags, "flags", logits, "logits")
    _checks.same_device(stats, "stats", logits, "logits")
    if logits.dim() < 1 or logits.shape[:-1] != flags.shape:
        raise ValueError(f"logits must be [..., E] with flags [...] (e.g. [T, E] and [T]); got logits "
                         f"{list(logits.shape)} and flags {list(flags.shape)}")
    E = logits.shape[-1]
    if E < 1:
        raise ValueError("logits has no experts (last dimension is 0)")
    if list(stats.shape) != [2, E, 4]:
        raise ValueError(f"stats must be [2, E, 4] = [2, {E}, 4]; got {list(stats.shape)}")
    if not 1 <= top_k <= E:
        raise ValueError(f"top_k must be in [1, E = {E}]; got {top_k}")


def moe_router_stats_(stats: torch.Tensor, logits: torch.Tensor, flags: torch.Tensor, *, top_k: int,
                      normalize_topk: bool = True) -> torch.Tensor:
    """Accumulate per-expert router statistics into ``stats`` in place (equations in the module docstring).

    Args:
        stats: [2, E, 4] float32 accumulator (rows forget, retain; columns count, sum gate weight,
            sum router probability, sum probability^2); float64 runs the reference path.
        logits: [..., E] float32 or bfloat16 router logits (float64: reference path); any strides.
        flags: [...] integer or bool per-token group: 0 ignore, 1 forget, 2 retain.
        top_k: experts per token (the router's num_experts_per_tok), 1 <= top_k <= E.
        normalize_topk: renormalize the gate weights over the top-k (``norm_topk_prob``).
    Returns:
        stats (mutated).
    """
    _validate(stats, logits, flags, top_k, normalize_topk)
    E = logits.shape[-1]
    z = logits.reshape(-1, E)
    f = flags.reshape(-1).to(torch.int64)
    backend = _native.select_backend(logits.device, op="moe_router_stats_")
    if stats.dtype == torch.float32 and logits.dtype in _LOGIT_DTYPES and stats.is_contiguous():
        if backend == "native":
            torch.ops.unlearnx.moe_router_stats_(stats, z.contiguous(), f.contiguous(), top_k, normalize_topk)
            return stats
        if backend == "triton":
            from unlearnx.kernels.router_stats import moe_router_stats_triton

            moe_router_stats_triton(stats, z.contiguous(), f.contiguous(), top_k, normalize_topk)
            return stats
    # The flag range is checked where it is free (CPU; the native op checks it itself); on GPU it
    # would cost a host sync.
    if f.device.type == "cpu" and f.numel() and not torch.compiler.is_compiling():
        bad = (f < 0) | (f > 2)
        if bool(bad.any()):
            raise ValueError(f"flags contains {int(f[bad][0])}; allowed: 0 (ignore), 1 (forget), 2 (retain)")
    stats += moe_router_stats_reference(z, f, top_k, normalize_topk).to(stats.dtype)
    return stats


# Registered by unlearnx.ops.registry (with the CPU / CUDA kernels the native library lacks).
def _moe_router_stats_fake(stats, logits, flags, top_k, normalize_topk=True):
    torch._check(logits.dim() == 2, lambda: "logits must be [T, E]")
    return None


def _moe_router_stats_op_reference(stats, logits, flags, top_k, normalize_topk=True):
    """unlearnx::moe_router_stats_ (the op's schema) on the reference path."""
    stats += moe_router_stats_reference(logits, flags, top_k, normalize_topk).to(stats.dtype)
