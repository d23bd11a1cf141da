"""Boundary unlearning: Boundary shrink and Boundary expand (Chen et al., CVPR 2023)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from unlearnx.methods.model_parts import output_linear
from unlearnx.methods.registry import UnlearningMethod, register_method
from unlearnx.methods.training import fit, make_optimizer, seeded

__all__ = ["BoundaryShrink", "BoundaryExpand"]

_PAPER = ("Chen et al., 'Boundary Unlearning: Rapid Forgetting of Deep Networks via Shifting the "
          "Decision Boundary', CVPR 2023")
# Reference code: 10 "poison" epochs, SGD lr 1e-5, momentum 0.9, no weight decay, batch 64.
_DEFAULTS = {"epochs": 10, "lr": 1e-5, "batch_size": 64, "momentum": 0.9, "weight_decay": 0.0}


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bound: float, clamp) -> torch.Tensor:
    """x_adv = clip(x + bound · sign(∇_x CE(f(x), y))), the untargeted FGSM step on `model` (eval mode).

    x `[B, ...]`, y `[B]`; clip to `clamp = (low, high)` unless None. Returns a detached tensor.
    """
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    x_adv = x.detach() + bound * grad.sign()
    return x_adv.clamp(*clamp) if clamp is not None else x_adv


def _check_clamp(clamp):
    if clamp is not None and (not isinstance(clamp, (tuple, list)) or len(clamp) != 2 or clamp[0] >= clamp[1]):
        raise ValueError(f"clamp must be None or a (low, high) pair with low < high, got {clamp!r}")


@register_method("boundary_shrink")
class BoundaryShrink(UnlearningMethod):
    """Boundary shrink: relabel every forget sample with its nearest wrong class, found by FGSM on a
    frozen copy f_o of the original model, and fine-tune on D_f with those labels:

        x' = clip(x + ε·sign(∇_x CE(f_o(x), y))),  ŷ = argmax f_o(x'),  minimise CE(f_θ(x), ŷ) on D_f

    ε = `bound` 0.1; inputs clipped to `clamp` (default (0, 1): images in [0, 1]; the reference code
    also rounds to 1/255 steps, omitted here because inputs need not be 8-bit images). Defaults of the
    reference code: 10 epochs, SGD lr 1e-5, momentum 0.9; meant for ~5,000-image forget classes —
    small forget sets need a larger lr (the unlearnx digits benchmark uses 1e-2).
    """

    paper = _PAPER
    requires = ("forget",)
    defaults = {**_DEFAULTS, "bound": 0.1, "clamp": (0.0, 1.0)}

    def validate(self):
        _check_clamp(self.hparams["clamp"])

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        frozen = copy.deepcopy(model).eval()
        frozen.requires_grad_(False)

        def shrink_loss(model, x, y, epoch):
            with torch.enable_grad():
                x_adv = fgsm(frozen, x, y, hp["bound"], hp["clamp"])
            with torch.no_grad():
                nearest = frozen(x_adv).argmax(1)
            return F.cross_entropy(model(x), nearest)

        opt = make_optimizer(model.parameters(), "sgd", lr=hp["lr"], momentum=hp["momentum"],
                             weight_decay=hp["weight_decay"])
        return fit(model, lambda epoch: [("forget", forget, shrink_loss)], epochs=hp["epochs"], optimizer=opt,
                   progress=progress, desc=self.name)


@register_method("boundary_expand")
class BoundaryExpand(UnlearningMethod):
    """Boundary expand: widen the output layer with a shadow class K, fine-tune the widened model
    on D_f with every label set to K, then drop the shadow output:

        W' = [W; w_K], b' = [b; b_K] (w_K, b_K freshly initialised with the seed);
        minimise CE(f'_θ(x), K) on D_f;  then W ← W'[:K], b ← b'[:K]

    The output layer is found by `model_parts.output_linear` (last nn.Linear of the head).
    Defaults of the reference code: 10 epochs, SGD lr 1e-5, momentum 0.9 (see Boundary shrink).
    """

    paper = _PAPER
    requires = ("forget",)
    defaults = dict(_DEFAULTS)

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        parent, attr, layer = output_linear(model)
        k = layer.out_features
        wide = nn.Linear(layer.in_features, k + 1, bias=layer.bias is not None)
        with seeded(seed):
            wide.reset_parameters()
        wide = wide.to(device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            wide.weight[:k].copy_(layer.weight)
            if layer.bias is not None:
                wide.bias[:k].copy_(layer.bias)
        setattr(parent, attr, wide)

        def shadow_loss(model, x, y, epoch):
            return F.cross_entropy(model(x), torch.full_like(y, k))

        try:
            opt = make_optimizer(model.parameters(), "sgd", lr=hp["lr"], momentum=hp["momentum"],
                                 weight_decay=hp["weight_decay"])
            log = fit(model, lambda epoch: [("forget", forget, shadow_loss)], epochs=hp["epochs"], optimizer=opt,
                      progress=progress, desc=self.name)
            # Drop the shadow class: the original layer object takes the first K rows back.
            with torch.no_grad():
                layer.weight.copy_(wide.weight[:k])
                if layer.bias is not None:
                    layer.bias.copy_(wide.bias[:k])
        finally:
            setattr(parent, attr, layer)  # on failure the output layer is left as it was
        return log
