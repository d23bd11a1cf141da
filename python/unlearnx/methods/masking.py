"""Weight masks for unlearning: global top-k masks, exactly-masked optimizers, magnitude pruning.

* SalUn (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency",
  ICLR 2024): mask m = the top r = 0.5 fraction of the saliency |∇θ CE(D_f)| ranked globally over
  all parameters; unlearning then updates only m, and θ_u = m⊙θ + (1−m)⊙θ_o must hold exactly.
  The reference code masked gradients only, so weight decay and momentum still moved masked
  weights (fixed there in 2026-02). :class:`MaskedOptimizer` restores masked coordinates bit for
  bit after every step and zeroes their optimizer state.
* OMP prune-first (Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023):
  global unstructured magnitude pruning at 95% sparsity, then any method runs on the sparse model
  with pruned weights kept exactly 0 (:func:`magnitude_prune` + ``MaskedOptimizer(originals="zeros")``).
* SalUn-soft: keep only the top-k entries of Δθ = θ − θ_o after each step (:func:`keep_topk_delta_`).

All selections are exact (unlearnx.ops.global_select, no concatenation) with a deterministic tie
rule: among elements equal to the threshold, the earliest in dict/list order then flat order are
kept, so exactly k elements are selected.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from unlearnx.ops.select import masked_restore_, topk_masks

_STATE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

__all__ = ["MaskedOptimizer", "global_topk_masks", "keep_topk_delta_", "magnitude_prune", "masks_by_param"]


def _check_fraction(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not 0.0 <= v <= 1.0 or math.isnan(v):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


@torch.no_grad()
def global_topk_masks(
    scores: Mapping[str, torch.Tensor],
    fraction: float = 0.5,
    *,
    largest: bool = True,
    absolute: bool = False,
    ties: str = "exact",
) -> dict[str, torch.Tensor]:
    """Boolean masks of the top ``fraction`` of all entries of ``scores``, ranked globally.

    k = floor(fraction · N) entries are kept (SalUn's ``int(len(all_elements) * threshold)``),
    N = total entries over the dict; ``largest=False`` keeps the k smallest. Ties at the threshold:
    ``"exact"`` keeps the earliest (dict order, then flat order) so exactly k are kept; ``"all"``
    keeps all of them. Scores must be fp32/bf16/fp16 without NaN (the select raises, naming the key).

    Args:
        scores: name -> score tensor (e.g. SalUn saliency |g|), any shapes, one device.
        fraction: kept fraction r in [0, 1] (SalUn default 0.5: the global median).
    Returns:
        name -> bool mask of the score's shape (True = kept / trainable).
    """
    if not isinstance(scores, Mapping):
        raise TypeError(f"scores must be a mapping of name -> tensor, got {type(scores).__name__}")
    fraction = _check_fraction(fraction, "fraction")
    names = list(scores)
    tensors = [scores[n] for n in names]
    for n, t in zip(names, tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"scores[{n!r}] must be a torch.Tensor, got {type(t).__name__}")
    if not names:
        return {}
    total = sum(t.numel() for t in tensors)
    k = math.floor(fraction * total)
    try:
        masks = topk_masks(tensors, k, absolute=absolute, largest=largest, ties=ties)
    except (RuntimeError, ValueError) as exc:
        # translate "xs[i]" in the op's message into the score's name
        msg = str(exc)
        for i in reversed(range(len(names))):
            msg = msg.replace(f"xs[{i}]", f"scores[{names[i]!r}]")
        raise type(exc)(msg) from exc
    return dict(zip(names, masks))


def masks_by_param(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[nn.Parameter, torch.Tensor]:
    """Turns name -> mask (names of ``model.named_parameters()``) into parameter -> mask."""
    params = dict(model.named_parameters())
    out = {}
    for name, m in masks.items():
        if name not in params:
            raise KeyError(f"masks[{name!r}] names no parameter of the model")
        out[params[name]] = m
    return out


class MaskedOptimizer(torch.optim.Optimizer):
    """Wraps any torch optimizer so that masked coordinates never change: θ = m⊙θ + (1−m)⊙θ₀.

    After every ``step()``: θ ← m⊙θ + (1−m)⊙θ₀ for every masked parameter and the masked entries of
    its optimizer state tensors (momentum_buffer, exp_avg, exp_avg_sq, ...) ← 0, as one multi-tensor
    op (unlearnx.ops.masked_restore_). Restored entries are bit copies of θ₀, so they stay
    bit-identical through any number of steps with weight decay and momentum. With ``mask_grads``
    (default, as SalUn), masked gradients are zeroed before the step too, so optimizers whose
    update couples coordinates (norm-based trust ratios such as LAMB) see only the kept gradients.

    Args:
        optimizer: the optimizer to wrap (its param_groups, state and state_dict are shared).
        masks: parameter -> mask, or a list aligned with the optimizer's parameters (param_groups
            order); a mask is bool of the parameter's shape (True = trainable) or 1-bit packed
            uint8. Parameters without a mask are not touched.
        originals: θ₀: None copies the masked parameters now (SalUn); ``"zeros"`` restores masked
            entries to 0 without storing anything (pruning); or parameter -> tensor / a list
            aligned with the masked parameters.
        mask_grads: zero masked gradients before each step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, masks, originals=None, *, mask_grads: bool = True):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        all_params = [p for g in optimizer.param_groups for p in g["params"]]
        if isinstance(masks, Mapping):
            ids = {id(p) for p in all_params}
            for p in masks:
                if id(p) not in ids:
                    raise ValueError("masks has a key that is not a parameter of the optimizer")
            pairs = [(p, masks[p]) for p in all_params if p in masks]
        elif isinstance(masks, Sequence) and not isinstance(masks, torch.Tensor):
            if len(masks) != len(all_params):
                raise ValueError(f"masks has {len(masks)} entries but the optimizer has {len(all_params)} parameters")
            pairs = [(p, m) for p, m in zip(all_params, masks) if m is not None]
        else:
            raise TypeError("masks must be a mapping parameter -> mask or a list aligned with the optimizer's parameters")
        for i, (p, m) in enumerate(pairs):
            if not isinstance(m, torch.Tensor) or m.dtype not in (torch.bool, torch.uint8):
                raise TypeError(f"mask {i} must be a bool or packed uint8 tensor")
            if m.dtype == torch.bool and m.shape != p.shape:
                raise ValueError(f"mask {i} has shape {list(m.shape)} but its parameter has shape {list(p.shape)}")
            if m.device != p.device:
                raise ValueError(f"mask {i} is on {m.device} but its parameter is on {p.device}")
        self._inner = optimizer
        self._params = [p for p, _ in pairs]
        self._masks = [m.contiguous() for _, m in pairs]
        if originals is None:
            self._originals = [p.detach().clone() for p in self._params]
        elif isinstance(originals, str):
            if originals != "zeros":
                raise ValueError(f"originals must be None, 'zeros', a mapping or a list, got {originals!r}")
            self._originals = None
        elif isinstance(originals, Mapping):
            self._originals = [originals[p].detach() for p in self._params]
        else:
            originals = list(originals)
            if len(originals) != len(self._params):
                raise ValueError(f"originals has {len(originals)} tensors but {len(self._params)} parameters are masked")
            self._originals = [o.detach() for o in originals]
        if self._originals is not None:
            for i, (p, o) in enumerate(zip(self._params, self._originals)):
                if o.shape != p.shape or o.dtype != p.dtype or o.device != p.device:
                    raise ValueError(f"originals[{i}] must match its parameter's shape, dtype and device")
        self.mask_grads = bool(mask_grads)
        # torch.optim.Optimizer.__init__ is not called: param_groups / state / defaults are the
        # wrapped optimizer's (properties below), so LR schedulers and checkpoints see one optimizer.
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}

    # shared bookkeeping of the wrapped optimizer
    @property
    def param_groups(self):
        return self._inner.param_groups

    @param_groups.setter
    def param_groups(self, value):
        self._inner.param_groups = value

    @property
    def state(self):
        return self._inner.state

    @state.setter
    def state(self, value):
        self._inner.state = value

    @property
    def defaults(self):
        return self._inner.defaults

    @defaults.setter
    def defaults(self, value):
        self._inner.defaults = value

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._inner

    @property
    def masks(self) -> list[torch.Tensor]:
        return list(self._masks)

    def state_dict(self):
        return self._inner.state_dict()

    def load_state_dict(self, state_dict):
        self._inner.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True):
        self._inner.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group):
        self._inner.add_param_group(param_group)

    def __repr__(self):
        return f"MaskedOptimizer({self._inner!r}, {len(self._params)} masked tensors)"

    @torch.no_grad()
    def restore(self) -> None:
        """Applies θ ← m⊙θ + (1−m)⊙θ₀ and zeroes masked optimizer state now (step() calls it)."""
        states = []
        for p in self._params:
            st = self._inner.state.get(p, {})
            # per-coordinate state only: same shape as the parameter, floating point; never the
            # step counter (a 0-dim tensor that a 0-dim parameter's shape would match)
            states.append([v for key, v in st.items() if key != "step" and isinstance(v, torch.Tensor)
                           and v.dtype in _STATE_DTYPES and v.shape == p.shape])
        masked_restore_(self._params, self._masks, originals=self._originals, states=states)

    def step(self, closure=None):
        if self.mask_grads:
            with torch.no_grad():
                idx = [i for i, p in enumerate(self._params) if p.grad is not None]
                masked_restore_([self._params[i].grad for i in idx], [self._masks[i] for i in idx])
        loss = self._inner.step(closure)
        self.restore()
        return loss


@torch.no_grad()
def magnitude_prune(
    model: nn.Module,
    sparsity: float = 0.95,
    *,
    module_types: Iterable[type] = (nn.Conv2d, nn.Linear),
) -> dict[str, torch.Tensor]:
    """Global unstructured magnitude pruning of the ``weight`` of every module of ``module_types``.

    n_prune = round(sparsity · N) weights with the smallest |w| over all chosen weights are set to
    exactly 0 (N = total chosen weights; torch.nn.utils.prune's count rule); ties at the threshold
    are pruned last-first, i.e. the earliest (module order, then flat order) tied weights are kept.
    OMP (Jia et al., NeurIPS 2023) uses 95% sparsity. Keep them at zero through later training
    with ``MaskedOptimizer(opt, masks_by_param(model, masks), originals="zeros")``.

    Returns:
        parameter name (as in ``model.named_parameters()``) -> bool mask (True = kept weight).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    sparsity = _check_fraction(sparsity, "sparsity")
    module_types = tuple(module_types)
    if not module_types or not all(isinstance(t, type) for t in module_types):
        raise TypeError("module_types must be a non-empty tuple of module classes")
    names, weights = [], []
    for mod_name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(mod, module_types) and isinstance(w, torch.Tensor):
            names.append(f"{mod_name}.weight" if mod_name else "weight")
            weights.append(w)
    if not weights:
        raise ValueError(f"model has no module of types {[t.__name__ for t in module_types]} with a weight")
    total = sum(w.numel() for w in weights)
    keep = total - round(sparsity * total)
    masks = topk_masks([w.detach() for w in weights], keep, absolute=True, largest=True, ties="exact")
    masked_restore_(weights, masks)  # pruned entries <- exactly 0
    return dict(zip(names, masks))


@torch.no_grad()
def keep_topk_delta_(
    params: Sequence[torch.Tensor], originals: Sequence[torch.Tensor], k: int
) -> list[torch.Tensor]:
    """SalUn-soft's per-step re-threshold: keep the k largest |θ − θ₀| entries, reset the rest to θ₀.

    Δθ is ranked globally over all params (exact, ties kept in list/flat order); every other entry
    becomes a bit copy of θ₀. Materializes Δθ in fp32 (one temporary the size of params).
    Returns the masks (True = kept update).
    """
    params = list(params)
    originals = list(originals)
    if len(params) != len(originals):
        raise ValueError(f"originals has {len(originals)} tensors but params has {len(params)}")
    deltas = [(p.float() - o.float()) for p, o in zip(params, originals)]
    masks = topk_masks(deltas, k, absolute=True, largest=True, ties="exact")
    masked_restore_(params, masks, originals=originals)
    return masks
