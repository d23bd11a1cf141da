"""Global selection over a list of tensors: exact k-th value / quantile, masks, masked restores.

SalUn (Fan et al., ICLR 2024) keeps the top half of all weights by saliency, OMP prune-first
unlearning (Jia et al., NeurIPS 2023, "Model Sparsity Can Simplify Machine Unlearning") keeps the
top 5% by magnitude, SalUn-soft re-thresholds every step and worst-case forget-set selection
(Fan et al., 2024) picks the top m samples. All need one exact global threshold over many tensors;
these ops find it by radix select on order-preserving 32-bit keys, with no concatenated copy.

Conventions (every backend, every function here):

* k is 1-based, as in torch.kthvalue: 1 <= k <= N, N the total element count over the list;
  k = 0 is rejected by the select (the mask helpers define k = 0 as "keep nothing").
  ``largest=True`` asks for the k-th largest, i.e. the (N - k + 1)-th smallest.
* Values are compared as fp32 (bf16 and fp16 widen exactly, so mixed lists are fine); -0 == +0;
  ``absolute=True`` ranks |x|. NaN has no rank: the select raises, naming the first tensor that
  holds one. The returned value is exactly torch.kthvalue of the (|x| of the) fp32
  concatenation (with -0 reported as +0).
* Tie rule: the kept set of a top-k mask is every element strictly beyond the threshold plus, with
  ``ties="exact"``, the first ties in list order then flat (row-major) order until exactly k are
  kept; with ``ties="all"`` every tie is kept (k or more elements).
* A mask is ``True`` where an element is kept. Packed masks are uint8 with ceil(numel / 8) bytes,
  element j in bit j % 8 of byte j // 8 (numpy's ``bitorder="little"``), padding bits zero.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from unlearnx import _native
from unlearnx.ops import _checks

__all__ = [
    "MaskStats",
    "global_kth_value",
    "global_quantile",
    "global_select",
    "global_select_reference",
    "mask_counts_reference",
    "mask_stats",
    "masked_restore_",
    "masked_restore_reference_",
    "pack_mask",
    "project_capped_simplex",
    "threshold_masks",
    "threshold_masks_reference",
    "topk_masks",
    "unpack_mask",
]

_VALUE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_RESTORE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INTERPOLATIONS = ("linear", "lower", "higher", "nearest", "midpoint")


# ---------------------------------------------------------------------------------------------
# pure-PyTorch references (tests, benchmarks, and the fallback without the native library)


def _nan_check(xs: list[torch.Tensor]) -> None:
    for i, x in enumerate(xs):
        if torch.isnan(x).any():
            raise ValueError(f"xs[{i}] contains NaN; NaN has no rank (remove or replace it, e.g. torch.nan_to_num)")


def global_select_reference(xs, k: int, absolute: bool, largest: bool, exact: bool):
    """Reference of ``torch.ops.unlearnx.global_select`` (concatenates; for tests and fallback)."""
    _nan_check(xs)
    flat = torch.cat([x.reshape(-1).float() for x in xs])
    n = flat.numel()
    if n == 0:
        raise ValueError("xs holds no elements; the k-th value of an empty list is undefined")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (1-based, like torch.kthvalue), got {k}")
    if absolute:
        flat = flat.abs()
    value = flat.kthvalue(n - k + 1 if largest else k).values + 0.0  # + 0.0 turns -0 into +0
    n_less = int((flat < value).sum())
    n_equal = int((flat == value).sum())
    beyond = n - n_less - n_equal if largest else n_less
    numels = [x.numel() for x in xs]
    limits = torch.tensor(numels, dtype=torch.int64)
    if exact:
        need = k - beyond
        pos = int((flat == value).nonzero()[need - 1])  # global flat index of the need-th tie
        starts = torch.tensor([0, *numels[:-1]], dtype=torch.int64).cumsum(0)
        limits = torch.minimum((pos + 1 - starts).clamp(min=0), limits)
    device = xs[0].device
    return value.to(device), torch.tensor([beyond, n_equal], dtype=torch.int64, device=device), limits.to(device)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Packs a bool mask (any shape, flat order) into uint8[ceil(numel / 8)], element j -> bit j % 8."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8) * weights).sum(1, dtype=torch.uint8) if flat.numel() else flat


def unpack_mask(packed: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: uint8[ceil(numel / 8)] -> bool tensor of ``shape``."""
    shape = torch.Size(shape)
    n = shape.numel()
    if packed.dtype != torch.uint8 or packed.numel() != (n + 7) // 8:
        raise ValueError(f"packed must be uint8 with {(n + 7) // 8} bytes for shape {list(shape)}")
    bits = torch.arange(8, dtype=torch.uint8, device=packed.device)
    unpacked = (packed.reshape(-1, 1) >> bits) & 1
    return unpacked.reshape(-1)[:n].bool().reshape(shape)


def threshold_masks_reference(xs, threshold, tie_limits, absolute: bool, largest: bool, packed: bool):
    """Reference of ``torch.ops.unlearnx.threshold_masks``."""
    t = threshold.float()
    out = []
    for x, limit in zip(xs, tie_limits.tolist()):
        v = x.float().reshape(-1)
        if absolute:
            v = v.abs()
        beyond = v > t if largest else v < t
        ties = (v == t) & (torch.arange(v.numel(), device=v.device) < limit)
        m = (beyond | ties).reshape(x.shape)
        out.append(pack_mask(m) if packed else m)
    return out


def mask_counts_reference(masks):
    """Reference of ``torch.ops.unlearnx.mask_counts``: trues of bool masks, set bits of packed ones."""
    counts = []
    for m in masks:
        if m.dtype == torch.uint8:
            m = unpack_mask(m, (m.numel() * 8,))
        counts.append(int(m.sum()))
    device = masks[0].device if masks else torch.device("cpu")
    return torch.tensor(counts, dtype=torch.int64, device=device)


def masked_restore_reference_(params, originals, masks, states, state_owner):
    """Reference of ``torch.ops.unlearnx.masked_restore_`` (bit copies via torch.where)."""
    for i, (p, m) in enumerate(zip(params, masks)):
        if m.dtype == torch.uint8:
            m = unpack_mask(m, p.shape)
        src = originals[i] if originals else torch.zeros((), dtype=p.dtype, device=p.device)
        p.copy_(torch.where(m, p, src))
        for s, owner in zip(states, state_owner):
            if owner == i:
                s.copy_(torch.where(m.reshape(s.shape), s, torch.zeros((), dtype=s.dtype, device=s.device)))


# ---------------------------------------------------------------------------------------------
# typed wrappers


def _backend(device: torch.device, op: str) -> str:
    return _native.select_backend(device, op=op)


def _value_list(xs, name: str = "xs") -> list[torch.Tensor]:
    xs = _checks.tensor_list(xs, name)
    if not xs:
        raise ValueError(f"{name} must hold at least one tensor")
    for i, x in enumerate(xs):
        _checks.dtype_in(x, f"{name}[{i}]", _VALUE_DTYPES)
        _checks.same_device(x, f"{name}[{i}]", xs[0], f"{name}[0]")
    return [x.contiguous() for x in xs]


def _check_k(k, total: int, *, allow_zero: bool) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    lo = 0 if allow_zero else 1
    if total == 0 and not allow_zero:
        raise ValueError("xs holds no elements; the k-th value of an empty list is undefined")
    if not lo <= k <= total:
        raise ValueError(f"k must be in [{lo}, {total}] (1-based, like torch.kthvalue), got {k}")
    return k


def _select(xs, k, absolute, largest, exact):
    backend = _backend(xs[0].device, "global_select")
    if backend == "native":
        try:
            return torch.ops.unlearnx.global_select(xs, k, absolute, largest, exact)
        except RuntimeError as exc:
            # The native kernels find NaN during their first pass and raise RuntimeError; the
            # reference and Triton paths raise ValueError: one error type for bad input everywhere.
            msg = str(exc).splitlines()[0] if str(exc) else ""
            if "contains NaN; NaN has no rank" in msg:
                raise ValueError(msg.removeprefix("unlearnx: ")) from None
            raise
    if backend == "triton":
        from unlearnx.kernels.select import global_select_triton

        return global_select_triton(xs, k, absolute, largest, exact)
    return global_select_reference(xs, k, absolute, largest, exact)


@torch.no_grad()
def global_select(
    xs: Sequence[torch.Tensor], k: int, *, absolute: bool = False, largest: bool = False, exact: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact k-th smallest (or largest) value over a list of tensors, with the tie bookkeeping.

    Args:
        xs: tensors of any shapes, fp32 / bf16 / fp16 (mixed allowed), one device, N elements in all.
        k: 1-based rank, 1 <= k <= N.
        absolute: rank |x| instead of x.
        largest: the k-th largest instead of the k-th smallest.
        exact: compute tie limits that keep exactly k elements (see below).

    Returns:
        ``(value, counts, tie_limits)``: value is a 0-dim fp32 tensor, v = the k-th element of the
        sorted (|x| of the) concatenation; counts is int64[2] = (#elements strictly beyond v in the
        selection direction, #elements equal to v); tie_limits is int64[len(xs)] such that
        :func:`threshold_masks` with them keeps exactly k elements (ties kept first in list/flat
        order), or every numel when ``exact=False``. All on the device of xs (no host sync on CUDA).

    Radix select on order-preserving 32-bit keys: a 16-bit histogram pass, then a candidate pass
    (or a second histogram pass when > N/256 elements share the top bits); no concatenation.
    """
    xs = _value_list(xs)
    k = _check_k(k, sum(x.numel() for x in xs), allow_zero=False)
    return _select(xs, k, bool(absolute), bool(largest), bool(exact))


def global_kth_value(xs: Sequence[torch.Tensor], k: int, *, absolute: bool = False) -> torch.Tensor:
    """The k-th smallest value (1-based) of the concatenation of ``xs`` (of |x| if ``absolute``).

    Equal to ``torch.kthvalue(torch.cat([x.float().flatten() for x in xs]), k).values`` (with -0
    reported as +0) without building the concatenation. Returns a 0-dim fp32 tensor on xs' device.
    """
    return global_select(xs, k, absolute=absolute, largest=False, exact=False)[0]


@torch.no_grad()
def global_quantile(
    xs: Sequence[torch.Tensor], q: float, *, absolute: bool = False, interpolation: str = "linear"
) -> torch.Tensor:
    """The q-quantile of the concatenation of ``xs`` (of |x| if ``absolute``), as torch.quantile.

    With sorted values s_0 <= ... <= s_{N-1}, pos = q * (N - 1) (computed in float64), lo = floor(pos),
    hi = ceil(pos): ``lower`` s_lo, ``higher`` s_hi, ``nearest`` s_round(pos) (half to even, as
    torch), ``midpoint`` (s_lo + s_hi) / 2, ``linear`` s_lo + (pos - lo) * (s_hi - s_lo) evaluated in
    float64 with torch.lerp's formula; the result is rounded once to fp32 (0-dim, xs' device).
    ``linear`` / ``midpoint`` read one count back to the host and may run a second select.
    """
    xs = _value_list(xs)
    q = _checks.finite_scalar(q, "q", min_value=0.0)
    if q > 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(_INTERPOLATIONS)}, got {interpolation!r}")
    n = sum(x.numel() for x in xs)
    if n == 0:
        raise ValueError("xs holds no elements; the quantile of an empty list is undefined")
    pos = q * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    if interpolation in ("lower", "higher", "nearest"):
        idx = {"lower": lo, "higher": hi, "nearest": round(pos)}[interpolation]
        return _select(xs, idx + 1, bool(absolute), False, False)[0]
    v_lo, counts, _ = _select(xs, lo + 1, bool(absolute), False, False)
    n_less, n_equal = counts.tolist()
    v_hi = v_lo if n_less + n_equal >= hi + 1 else _select(xs, hi + 1, bool(absolute), False, False)[0]
    a, b = float(v_lo), float(v_hi)
    if interpolation == "midpoint":
        out = a + 0.5 * (b - a) if a != b else a
    else:
        w = pos - lo
        out = a + w * (b - a) if w < 0.5 else b - (b - a) * (1.0 - w)
    return torch.tensor(out, dtype=torch.float64).to(torch.float32).to(xs[0].device)


@torch.no_grad()
def threshold_masks(
    xs: Sequence[torch.Tensor],
    threshold: torch.Tensor | float,
    *,
    tie_limits: torch.Tensor | None = None,
    absolute: bool = False,
    largest: bool = True,
    packed: bool = False,
) -> list[torch.Tensor]:
    """Per-tensor masks of the elements beyond a threshold.

    keep[i][j] <=> v beyond t or (v == t and j < tie_limits[i]), v = xs[i].flatten()[j] as fp32
    (|v| if ``absolute``), "beyond" = ``>`` if ``largest`` else ``<``; NaN is never kept.
    ``tie_limits`` (int64[len(xs)], from :func:`global_select`) default: keep every tie.

    Returns bool masks of each tensor's shape, or 1-bit packed uint8[ceil(numel / 8)] masks.
    """
    xs = _value_list(xs)
    device = xs[0].device
    if not isinstance(threshold, torch.Tensor):
        threshold = torch.tensor(_checks.finite_scalar(threshold, "threshold"), dtype=torch.float32, device=device)
    if threshold.numel() != 1:
        raise ValueError(f"threshold must hold one value, got shape {list(threshold.shape)}")
    threshold = threshold.reshape(()).to(torch.float32)
    _checks.same_device(threshold, "threshold", xs[0], "xs[0]")
    if tie_limits is None:
        tie_limits = torch.tensor([x.numel() for x in xs], dtype=torch.int64, device=device)
    _checks.dtype_in(tie_limits, "tie_limits", (torch.int64,))
    if tie_limits.shape != (len(xs),):
        raise ValueError(f"tie_limits must have shape [{len(xs)}] (one limit per tensor of xs), got {list(tie_limits.shape)}")
    _checks.same_device(tie_limits, "tie_limits", xs[0], "xs[0]")
    args = (xs, threshold, tie_limits.contiguous(), bool(absolute), bool(largest), bool(packed))
    backend = _backend(device, "threshold_masks")
    if backend == "native":
        return list(torch.ops.unlearnx.threshold_masks(*args))
    if backend == "triton":
        from unlearnx.kernels.select import threshold_masks_triton

        return threshold_masks_triton(*args)
    return threshold_masks_reference(*args)


@torch.no_grad()
def topk_masks(
    xs: Sequence[torch.Tensor],
    k: int,
    *,
    absolute: bool = False,
    largest: bool = True,
    ties: str = "exact",
    packed: bool = False,
) -> list[torch.Tensor]:
    """Masks of the k largest (or smallest) elements over the whole list, one per tensor.

    k = 0 keeps nothing and k = N keeps everything (no select is run). ``ties="exact"`` keeps
    exactly k (ties kept first in list, then flat order); ``ties="all"`` keeps every element equal
    to the k-th value too. Costs about three reads of xs (select: two, masks: one) plus the writes.
    """
    xs = _value_list(xs)
    if ties not in ("exact", "all"):
        raise ValueError(f"ties must be 'exact' or 'all', got {ties!r}")
    n = sum(x.numel() for x in xs)
    k = _check_k(k, n, allow_zero=True)
    if k == 0 or k == n:
        full = [torch.full(x.shape, k == n, dtype=torch.bool, device=x.device) for x in xs]
        return [pack_mask(m) for m in full] if packed else full
    value, _, limits = _select(xs, k, bool(absolute), bool(largest), ties == "exact")
    return threshold_masks(xs, value, tie_limits=limits, absolute=absolute, largest=largest, packed=packed)


@dataclass
class MaskStats:
    """Kept counts of a list of masks: per tensor (int64 [L]) and in all; fractions as float64."""

    kept: torch.Tensor
    numel: list[int]
    fraction: torch.Tensor
    overall: torch.Tensor


@torch.no_grad()
def mask_stats(masks: Sequence[torch.Tensor], *, numel: Sequence[int] | None = None) -> MaskStats:
    """Kept count and fraction per mask and overall (no host sync: results stay on the device).

    ``masks``: bool masks, or 1-bit packed uint8 masks (then ``numel`` gives each masked tensor's
    element count; for bool masks it defaults to the masks' own numel).
    """
    masks = _checks.tensor_list(masks, "masks")
    for i, m in enumerate(masks):
        _checks.dtype_in(m, f"masks[{i}]", (torch.bool, torch.uint8))
        _checks.same_device(m, f"masks[{i}]", masks[0], "masks[0]")
    if numel is None:
        if any(m.dtype == torch.uint8 for m in masks):
            raise ValueError("numel is required for packed (uint8) masks: the element count of each masked tensor")
        numel = [m.numel() for m in masks]
    numel = [int(v) for v in numel]
    if len(numel) != len(masks):
        raise ValueError(f"numel has {len(numel)} entries but masks has {len(masks)}")
    for i, (m, n) in enumerate(zip(masks, numel)):
        if m.dtype == torch.uint8 and m.numel() != (n + 7) // 8:
            raise ValueError(f"masks[{i}] has {m.numel()} bytes but numel[{i}] = {n} needs {(n + 7) // 8}")
    masks = [m.contiguous() for m in masks]
    device = masks[0].device if masks else torch.device("cpu")
    backend = _backend(device, "mask_counts")
    if backend == "native" and masks:
        kept = torch.ops.unlearnx.mask_counts(masks)
    elif backend == "triton" and masks:
        from unlearnx.kernels.select import mask_counts_triton

        kept = mask_counts_triton(masks)
    else:
        kept = mask_counts_reference(masks)
    total = torch.tensor(numel, dtype=torch.float64, device=device)
    fraction = kept.double() / total.clamp(min=1)
    overall = kept.sum().double() / max(sum(numel), 1)
    return MaskStats(kept=kept, numel=numel, fraction=fraction, overall=overall)


@torch.no_grad()
def masked_restore_(
    params: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    *,
    originals: Sequence[torch.Tensor] | None = None,
    states: Sequence[Sequence[torch.Tensor]] | None = None,
) -> None:
    """Exactly-masked update, in place: θ ← m⊙θ + (1−m)⊙θ₀ and masked optimizer state ← 0.

    Args:
        params: tensors (fp16/bf16/fp32/fp64) updated in place.
        masks: per param, bool of its shape or 1-bit packed uint8; True = keep the current value.
        originals: θ₀ per param (same dtype and shape); None restores masked entries to 0.
        states: per param, a list of tensors with its numel (momentum_buffer, exp_avg, ...) whose
            masked entries are zeroed.

    Masked entries are bit copies of θ₀ (no arithmetic), so they stay bit-identical however long
    the training runs. One multi-tensor call for the whole list.
    """
    params = _checks.tensor_list(params, "params")
    masks = _checks.tensor_list(masks, "masks")
    _checks.same_length(params, "params", masks, "masks")
    originals = [] if originals is None else _checks.tensor_list(originals, "originals")
    if originals:
        _checks.same_length(params, "params", originals, "originals")
    if states is None:
        states = [[] for _ in params]
    if isinstance(states, torch.Tensor) or len(states) != len(params):
        raise ValueError(f"states must be a list with one list of state tensors per param ({len(params)})")
    flat_states, owner = [], []
    for i, p in enumerate(params):
        _checks.dtype_in(p, f"params[{i}]", _RESTORE_DTYPES)
        _checks.same_device(p, f"params[{i}]", params[0], "params[0]")
        m = masks[i]
        _checks.same_device(m, f"masks[{i}]", params[0], "params[0]")
        if m.dtype == torch.bool:
            _checks.same_shape(p, f"params[{i}]", m, f"masks[{i}]")
        elif m.dtype == torch.uint8:
            if m.numel() != (p.numel() + 7) // 8:
                raise ValueError(f"masks[{i}] is a packed (uint8) mask of {m.numel()} bytes but params[{i}] has {p.numel()} elements")
        else:
            raise TypeError(f"masks[{i}] must be bool (same shape) or uint8 (1-bit packed), got {m.dtype}")
        if originals:
            o = originals[i]
            if o.dtype != p.dtype:
                raise TypeError(f"originals[{i}] is {o.dtype} but params[{i}] is {p.dtype}")
            _checks.same_shape(p, f"params[{i}]", o, f"originals[{i}]")
            _checks.same_device(o, f"originals[{i}]", params[0], "params[0]")
        for j, s in enumerate(_checks.tensor_list(states[i], f"states[{i}]")):
            _checks.dtype_in(s, f"states[{i}][{j}]", _RESTORE_DTYPES)
            if s.numel() != p.numel():
                raise ValueError(f"states[{i}][{j}] has {s.numel()} elements but params[{i}] has {p.numel()}")
            _checks.same_device(s, f"states[{i}][{j}]", params[0], "params[0]")
            flat_states.append(s)
            owner.append(i)
    if not params:
        return
    dense = [t if t.is_contiguous() else t.contiguous() for t in params]
    dense_states = [t if t.is_contiguous() else t.contiguous() for t in flat_states]
    originals = [o.contiguous() for o in originals]
    masks = [m.contiguous() for m in masks]
    backend = _backend(params[0].device, "masked_restore_")
    if backend == "native":
        torch.ops.unlearnx.masked_restore_(dense, originals, masks, dense_states, owner)
    elif backend == "triton":
        from unlearnx.kernels.select import masked_restore_triton_

        masked_restore_triton_(dense, originals, masks, dense_states, owner)
    else:
        masked_restore_reference_(dense, originals, masks, dense_states, owner)
    for a, b in zip([*params, *flat_states], [*dense, *dense_states]):
        if a is not b:
            a.copy_(b)


@torch.no_grad()
def project_capped_simplex(w: torch.Tensor, m: float, *, iters: int = 100) -> torch.Tensor:
    """Euclidean projection of w onto the capped simplex {0 <= w' <= 1, Σ w' = m}.

    The projection is w' = clip(w − τ, 0, 1) with the unique τ giving Σ w' = m (KKT conditions);
    τ is found by bisection on [min(w) − 1, max(w)] in float64 (``iters`` halvings), then solved
    exactly on the final active set: τ = (Σ_free w − (m − #ones)) / #free. Used by worst-case
    forget-set selection (Fan et al., 2024: w ← Proj(w − η(ℓ + 2γw)) on the upper level).

    Args:
        w: 1-D float tensor of N sample weights (any device).
        m: target sum, 0 <= m <= N.
        iters: bisection steps (100 halvings reach float64 resolution of the bracket).
    Returns:
        A new tensor like w (same dtype and device).
    """
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 1 or not w.is_floating_point():
        raise ValueError(f"w must be a 1-D floating-point tensor, got shape {list(w.shape)} and {w.dtype}")
    if not torch.isfinite(w).all():
        raise ValueError("w must be finite (no NaN or Inf)")
    m = _checks.finite_scalar(m, "m", min_value=0.0)
    if m > w.numel():
        raise ValueError(f"m must be in [0, len(w)] = [0, {w.numel()}], got {m}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive int, got {iters!r}")
    x = w.double()
    if x.numel() == 0:
        return w.clone()
    lo, hi = float(x.min()) - 1.0, float(x.max())  # Σ clip(w − lo) = N >= m, Σ clip(w − hi) = 0 <= m
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if float((x - mid).clamp(0.0, 1.0).sum()) > m:
            lo = mid
        else:
            hi = mid
    tau = 0.5 * (lo + hi)
    ones = x - tau >= 1.0
    free = (x - tau > 0.0) & ~ones
    n_free = int(free.sum())
    if n_free:
        tau = (float(x[free].sum()) - (m - int(ones.sum()))) / n_free
    return (x - tau).clamp(0.0, 1.0).to(w.dtype)


# ---------------------------------------------------------------------------------------------
# fake kernels (torch.compile / export), registered by unlearnx.ops.registry


def _global_select_fake(xs, k, absolute, largest, exact):
    d = xs[0].device
    return (
        torch.empty((), dtype=torch.float32, device=d),
        torch.empty(2, dtype=torch.int64, device=d),
        torch.empty(len(xs), dtype=torch.int64, device=d),
    )


def _threshold_masks_fake(xs, threshold, tie_limits, absolute, largest, packed):
    if packed:
        return [torch.empty((x.numel() + 7) // 8, dtype=torch.uint8, device=x.device) for x in xs]
    return [torch.empty(x.shape, dtype=torch.bool, device=x.device) for x in xs]


def _mask_counts_fake(masks):
    d = masks[0].device if masks else torch.device("cpu")
    return torch.empty(len(masks), dtype=torch.int64, device=d)


def _masked_restore_fake(params, originals, masks, states, state_owner):
    return None
