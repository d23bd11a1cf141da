"""Logit-combination decoding: ULD's filtered logit difference and WHP's mix, in one pass per row.

Two logit rows per position, the target's z_t and an auxiliary model's z_a ([..., V] each), are
combined into one distribution:

    mode "uld" (Ji et al., 2024, "Reversing the Forget-Retain Objectives: An Efficient LLM
               Unlearning Framework from Logit Difference"):
        c_v = z_t,v − w·z_a,v   if z_t,v ≥ min(max_u z_t,u + log r,  z_t,(k)),  k = max(1, ⌊r·V⌋)
        c_v = z_t,v             otherwise (the relative-top filter: no assistant term)
        where z_t,(k) is the k-th largest target logit (duplicates counted). On logits this is
        exactly the paper's filter on target log-probs (log p ≥ min(log p_max + log r, log p of the
        ⌊r·V⌋-th token)): subtracting logsumexp(z_t) from both sides changes nothing, and working
        on logits avoids its rounding. An assistant entry of −inf contributes no term (it would
        give +inf).
    mode "whp" (Eldan & Russinovich, 2023, "Who's Harry Potter?"; z_t = base model v_b, z_a =
               reinforced model v_r):
        c = v_b − w·ReLU(v_r − v_b)                 (−inf where v_b is −inf)
    assistant None: c = z_t (plain sampling with the same fused sampler).

Then, in this order (Hugging Face's warper order):
    temperature    s = c / T
    top-k          keep v iff c_v ≥ the k-th largest c (ties at the boundary all kept; 0 = off)
    top-p          q = softmax(s over the top-k survivors); keep v iff Σ_{u kept, q_u > q_v} q_u < top_p
                   (the smallest nucleus, tie-inclusive and independent of any sort order; 1 = off)
    log-probs      ℓ = log_softmax(s with dropped tokens at −inf)
    choice         greedy: argmax_v c_v; else Gumbel-max: argmax_v (ℓ_v + g_v) over kept tokens;
                   ties go to the lower token index in both cases.

The Gumbel noise is a counter-based hash (splitmix64), so a (seed, offset) pair gives the same draw
on every backend and device without a generator state: for row b, u_{b,v} =
((splitmix64(splitmix64(seed + γ·(offset + b)) + v) >> 40) + ½) · 2⁻²⁴ (γ = 0x9E3779B97F4A7C15,
64-bit wrap-around arithmetic), g = −log(−log u) in fp32. A decoding loop passes offset = step·B so
every (step, row) gets its own stream.

Backends (unlearnx._native.select_backend): the native CPU kernels (csrc/include/unlearnx/logit_diff.h),
the Triton kernels on CUDA (python/unlearnx/kernels/logit_diff.py), else the reference below.

All arithmetic is fp32 whatever the input dtype (fp32 / bf16 / fp16 rows; fp64 runs the reference in
fp64). The native kernels find z_t,(k) and the top-k / top-p thresholds by radix select over the
row, never by sorting it; the references below sort (they define the result, not the speed).
"""
from __future__ import annotations

import math

import torch

from unlearnx import _native
from unlearnx.ops import _checks

__all__ = [
    "MODES",
    "logit_diff_combine_reference",
    "logit_diff_logprobs",
    "logit_diff_logprobs_reference",
    "logit_diff_sample",
    "logit_diff_sample_reference",
    "gumbel_noise_reference",
]

# The op's integer mode argument: index in this tuple.
MODES = ("none", "uld", "whp")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _i64(c: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= (1 << 63) else c


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    x = x + _i64(_GAMMA)
    x = (x ^ _shr(x, 30)) * _i64(_M1)
    x = (x ^ _shr(x, 27)) * _i64(_M2)
    return x ^ _shr(x, 31)


def gumbel_noise_reference(seed: int, offset: int, rows: int, vocab: int, *, device=None,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The op's Gumbel noise g [rows, vocab] for (seed, offset) (see the module docstring)."""
    b = torch.arange(rows, dtype=torch.int64, device=device) + offset
    stream = _splitmix64(torch.full_like(b, _i64(seed & ((1 << 64) - 1))) + b * _i64(_GAMMA))
    x = _splitmix64(stream.unsqueeze(1) + torch.arange(vocab, dtype=torch.int64, device=device))
    u = (_shr(x, 40).to(torch.float32) + 0.5) * (2.0 ** -24)
    return (-torch.log(-torch.log(u))).to(dtype)


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def logit_diff_combine_reference(target: torch.Tensor, assistant: torch.Tensor | None, *, mode: str = "uld",
                                 weight: float = 1.0, relative_top: float = 0.1) -> torch.Tensor:
    """The combined logits c [..., V] (fp32; fp64 for fp64 input) of the module docstring."""
    wd = _work_dtype(target)
    zt = target.to(wd)
    if assistant is None or mode == "none":
        return zt.clone()
    za = assistant.to(wd)
    neg_inf = torch.tensor(float("-inf"), dtype=wd, device=zt.device)
    if mode == "whp":
        return torch.where(zt == float("-inf"), neg_inf, zt - weight * torch.relu(za - zt))
    vocab = zt.shape[-1]
    k = max(1, math.floor(relative_top * vocab))
    kth = zt.sort(-1, descending=True).values[..., k - 1:k]
    # log r rounded once to the working precision, as the kernels do.
    log_r = torch.tensor(math.log(relative_top), dtype=wd)
    thr = torch.minimum(zt.amax(-1, keepdim=True) + log_r, kth)
    apply = (zt >= thr) & (za != float("-inf"))
    return torch.where(apply, zt - weight * za, zt)


def _kept(c: torch.Tensor, temperature: float, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled logits s, keep mask) after temperature, top-k and top-p (module docstring)."""
    s = c / temperature
    keep = c > float("-inf")
    vocab = c.shape[-1]
    if 0 < top_k < vocab:
        kth = c.sort(-1, descending=True).values[..., top_k - 1:top_k]
        keep &= c >= kth
    if top_p < 1.0:
        q = torch.where(keep, s, float("-inf")).softmax(-1)
        # Mass strictly above each token: the exclusive prefix sum of the descending order, read at
        # the position of the first entry equal to q_v (= the number of entries greater than q_v).
        asc = q.sort(-1).values
        n_greater = vocab - torch.searchsorted(asc, q, right=True)
        desc = asc.flip(-1)
        mass_above = (desc.cumsum(-1) - desc).gather(-1, n_greater)
        keep &= mass_above < top_p
    return s, keep


def logit_diff_logprobs_reference(target: torch.Tensor, assistant: torch.Tensor | None, *, mode: str = "uld",
                                  weight: float = 1.0, relative_top: float = 0.1,
                                  temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(c / T) [..., V] of the combined logits (no top-k / top-p: the full distribution
    an evaluation scores labels under)."""
    c = logit_diff_combine_reference(target, assistant, mode=mode, weight=weight, relative_top=relative_top)
    return (c / temperature).log_softmax(-1)


def logit_diff_sample_reference(target: torch.Tensor, assistant: torch.Tensor | None, *, mode: str = "uld",
                                weight: float = 1.0, relative_top: float = 0.1, temperature: float = 1.0,
                                top_k: int = 0, top_p: float = 1.0, greedy: bool = False, seed: int = 0,
                                offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [B] int64, log-prob of each chosen token [B] fp32) for rows [B, V]."""
    c = logit_diff_combine_reference(target, assistant, mode=mode, weight=weight, relative_top=relative_top)
    s, keep = _kept(c, temperature, top_k, top_p)
    logp = torch.where(keep, s, float("-inf")).log_softmax(-1)
    if greedy:
        tokens = c.argmax(-1)  # the first maximal index: ties go to the lower token id
    else:
        g = gumbel_noise_reference(seed, offset, c.shape[0], c.shape[1], device=c.device, dtype=c.dtype)
        tokens = torch.where(keep, logp + g, float("-inf")).argmax(-1)
    chosen = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, chosen.to(torch.float32 if c.dtype != torch.float64 else torch.float64)


def _validate(target, assistant, mode, weight, relative_top, temperature, *, rows_only: bool):
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    _checks.dtype_in(target, "target", _DTYPES)
    if rows_only and target.dim() != 2:
        raise ValueError(f"target must be [B, V] (one row per sequence), got shape {list(target.shape)}")
    if target.dim() < 1 or target.shape[-1] == 0:
        raise ValueError(f"target must be [..., V] with V > 0, got shape {list(target.shape)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if assistant is not None:
        if not isinstance(assistant, torch.Tensor):
            raise TypeError(f"assistant must be a torch.Tensor or None, got {type(assistant).__name__}")
        if assistant.dtype != target.dtype:
            raise TypeError(f"assistant has dtype {assistant.dtype} but target has {target.dtype}")
        _checks.same_shape(target, "target", assistant, "assistant")
        _checks.same_device(assistant, "assistant", target, "target")
    elif mode != "none":
        raise ValueError(f"mode={mode!r} needs assistant logits; pass mode='none' to sample from target alone")
    _checks.finite_scalar(weight, "weight")
    r = _checks.finite_scalar(relative_top, "relative_top")
    if not 0.0 < r <= 1.0:
        raise ValueError(f"relative_top must be in (0, 1], got {relative_top}")
    t = _checks.finite_scalar(temperature, "temperature")
    if t <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def logit_diff_logprobs(target: torch.Tensor, assistant: torch.Tensor | None, *, mode: str = "uld",
                        weight: float = 1.0, relative_top: float = 0.1, temperature: float = 1.0) -> torch.Tensor:
    """log_softmax((combined logits) / temperature) over the vocabulary, for evaluation.

    Args:
        target, assistant: [..., V] logits of the same shape, dtype (fp32 / bf16 / fp16; fp64 runs
            the reference) and device; assistant None only with mode="none".
        mode: "uld" | "whp" | "none" (module docstring); weight: w (ULD) or α (WHP);
        relative_top: r in (0, 1] of ULD's filter; temperature: T > 0.
    Returns:
        fp32 [..., V] log-probabilities (fp64 for fp64 input). No gradient.
    """
    _validate(target, assistant, mode, weight, relative_top, temperature, rows_only=False)
    backend = _native.select_backend(target.device, op="logit_diff_logprobs")
    args = (target.contiguous(), None if assistant is None else assistant.contiguous(), MODES.index(mode),
            float(weight), float(relative_top), float(temperature))
    if backend == "native" and target.dtype in _NATIVE_DTYPES:
        return torch.ops.unlearnx.logit_diff_logprobs(*args)
    if backend == "triton" and target.dtype in _NATIVE_DTYPES:
        from unlearnx.kernels.logit_diff import logit_diff_logprobs_triton

        return logit_diff_logprobs_triton(*args)
    with torch.no_grad():
        return logit_diff_logprobs_reference(target, assistant, mode=mode, weight=weight,
                                             relative_top=relative_top, temperature=temperature)


def logit_diff_sample(target: torch.Tensor, assistant: torch.Tensor | None, *, mode: str = "uld",
                      weight: float = 1.0, relative_top: float = 0.1, temperature: float = 1.0, top_k: int = 0,
                      top_p: float = 1.0, greedy: bool = False, seed: int | None = None,
                      offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step: combine, filter and choose the next token of every row in one pass.

    Args:
        target, assistant: [B, V] logits of the last position (same shape, dtype, device);
            assistant None only with mode="none".
        mode, weight, relative_top, temperature: as in `logit_diff_logprobs`.
        top_k: keep the k largest combined logits (ties kept; 0 = off). top_p: nucleus mass in (0, 1].
        greedy: argmax of the combined logits instead of sampling.
        seed, offset: the Gumbel noise stream (module docstring); seed None draws one from torch's
            default generator (so torch.manual_seed makes runs reproducible).
    Returns:
        (tokens [B] int64, log-prob of each token under the filtered distribution [B] fp32).
    """
    _validate(target, assistant, mode, weight, relative_top, temperature, rows_only=True)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
    p = _checks.finite_scalar(top_p, "top_p")
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be an int >= 0, got {offset!r}")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    seed &= (1 << 63) - 1  # the op's int is signed 64-bit
    backend = _native.select_backend(target.device, op="logit_diff_sample")
    args = (target.contiguous(), None if assistant is None else assistant.contiguous(), MODES.index(mode),
            float(weight), float(relative_top), float(temperature), int(top_k), float(top_p), bool(greedy),
            seed, int(offset))
    if backend == "native" and target.dtype in _NATIVE_DTYPES:
        return torch.ops.unlearnx.logit_diff_sample(*args)
    if backend == "triton" and target.dtype in _NATIVE_DTYPES:
        from unlearnx.kernels.logit_diff import logit_diff_sample_triton

        return logit_diff_sample_triton(*args)
    with torch.no_grad():
        return logit_diff_sample_reference(target, assistant, mode=mode, weight=weight, relative_top=relative_top,
                                           temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                                           seed=seed, offset=offset)


# Registered by unlearnx.ops.registry (with the CPU / CUDA kernels the native library lacks).
def _logit_diff_sample_fake(target, assistant, mode, weight, relative_top, temperature, top_k, top_p, greedy, seed,
                            offset):
    torch._check(target.dim() == 2, lambda: "target must be [B, V]")
    rows = target.shape[0]
    return (torch.empty((rows,), dtype=torch.int64, device=target.device),
            torch.empty((rows,), dtype=torch.float32, device=target.device))


def _logit_diff_logprobs_fake(target, assistant, mode, weight, relative_top, temperature):
    return torch.empty(target.shape, dtype=torch.float32, device=target.device)


def _logit_diff_sample_op_reference(target, assistant, mode, weight, relative_top, temperature, top_k, top_p,
                                    greedy, seed, offset):
    """unlearnx::logit_diff_sample (the op's schema: integer mode) on the reference path."""
    with torch.no_grad():
        tokens, logp = logit_diff_sample_reference(
            target, assistant, mode=MODES[mode], weight=weight, relative_top=relative_top, temperature=temperature,
            top_k=top_k, top_p=top_p, greedy=greedy, seed=seed, offset=offset)
    return tokens, logp.float()


def _logit_diff_logprobs_op_reference(target, assistant, mode, weight, relative_top, temperature):
    """unlearnx::logit_diff_logprobs (the op's schema: integer mode) on the reference path."""
    with torch.no_grad():
        return logit_diff_logprobs_reference(target, assistant, mode=MODES[mode], weight=weight,
                                             relative_top=relative_top, temperature=temperature).float()
