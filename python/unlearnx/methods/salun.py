"""SalUn and SalUn-soft: random-label unlearning restricted to the salient weights.

Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency", ICLR 2024.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from unlearnx.methods.masking import MaskedOptimizer, global_topk_masks, keep_topk_delta_, masks_by_param
from unlearnx.methods.random_labels import RL
from unlearnx.methods.registry import register_method
from unlearnx.methods.training import make_optimizer
from unlearnx.stats import grad_saliency

__all__ = ["SalUn", "SalUnSoft", "saliency_masks"]

_PAPER = "Fan et al., 'SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency', ICLR 2024"


def _check_ratio(value) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1], got {value!r}")


def saliency_masks(model: nn.Module, forget, *, mask_ratio: float = 0.5, progress: bool = False) -> dict[str, torch.Tensor]:
    """SalUn's weight saliency mask at the current weights θ_o.

    g = |Σ_batches ∇θ CE(f_θ(x_f), y_f)| over the batches of `forget` (model in eval mode, batch-mean
    loss per batch; unlearnx.stats.grad_saliency), then m = the top ⌊r·P⌋ entries of g ranked
    globally over ALL parameters (P of them; r = `mask_ratio`, 0.5 = the global median), exact ties
    kept earliest-first (unlearnx.methods.masking.global_topk_masks).

    Returns: parameter name -> bool mask of the parameter's shape (True = updated by SalUn).
    """
    _check_ratio(mask_ratio)
    saliency = grad_saliency(model, forget, progress=progress)
    return global_topk_masks(saliency, mask_ratio)


@register_method("salun")
class SalUn(RL):
    """SalUn: RL (random labels on D_f, true labels on D_r, each epoch) with only the salient weights
    updated: θ_u = m⊙θ + (1−m)⊙θ_o, m = `saliency_masks` at θ_o (top r = 0.5 of |Σ ∇θ CE(D_f)|).

    The mask holds bit for bit: the SGD optimizer is wrapped in `MaskedOptimizer`, which zeroes the
    masked gradients before each step and, after it, copies θ_o back into the masked coordinates and
    zeroes their momentum (plain gradient masking, as the reference code did until 2026-02, lets
    weight decay and momentum move masked weights).
    Defaults: r 0.5, lr 0.013, 10 epochs, SGD momentum 0.9, weight decay 5e-4 (SalUn's CIFAR-10
    values); batch 64 instead of 256 — the same scaling as RL, so that a small data set still
    gets tens of steps per epoch. The saliency pass is part of the timed run.
    log["mask_fraction"]: the fraction of parameters updated.
    """

    paper = _PAPER
    defaults = {**RL.defaults, "mask_ratio": 0.5}

    def validate(self):
        _check_ratio(self.hparams["mask_ratio"])

    def make_optimizer(self, model, forget):
        masks = saliency_masks(model, forget, mask_ratio=self.hparams["mask_ratio"])
        self._mask_fraction = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
        return MaskedOptimizer(super().make_optimizer(model, forget), masks_by_param(model, masks))

    def run(self, model, *, forget, retain, seed, progress):
        log = super().run(model, forget=forget, retain=retain, seed=seed, progress=progress)
        return {**log, "mask_fraction": self._mask_fraction}


@register_method("salun_soft")
class SalUnSoft(RL):
    """SalUn-soft: RL with no fixed mask; after every optimizer step t (0-based, of T in all) the update
    Δθ = θ − θ_o is soft-thresholded to its k_t largest entries (|Δθ| ranked globally over all P
    parameters), k_t = ⌊r · (T − t)/T · P⌋, and every other entry is reset to θ_o bit for bit
    (unlearnx.methods.masking.keep_topk_delta_). The budget thus shrinks linearly from r·P at the
    first step to r·P/T at the last. Hyper-parameters as SalUn.
    """

    paper = _PAPER + " (soft-thresholding variant)"
    defaults = {**RL.defaults, "mask_ratio": 0.5}

    def validate(self):
        _check_ratio(self.hparams["mask_ratio"])

    def make_optimizer(self, model, forget):
        params = [p for p in model.parameters() if p.requires_grad]
        originals = [p.detach().clone() for p in params]
        total_params = sum(p.numel() for p in params)
        ratio, steps = self.hparams["mask_ratio"], self._total_steps
        opt = make_optimizer(params, "sgd", lr=self.hparams["lr"], momentum=self.hparams["momentum"],
                             weight_decay=self.hparams["weight_decay"])
        done = [0]

        def soft_threshold(optimizer, args, kwargs):
            k = math.floor(ratio * (steps - done[0]) / steps * total_params)
            keep_topk_delta_(params, originals, max(k, 0))
            done[0] += 1

        opt.register_step_post_hook(soft_threshold)
        return opt

    def run(self, model, *, forget, retain, seed, progress):
        self._total_steps = max(1, self.hparams["epochs"] * (len(forget) + len(retain)))
        return super().run(model, forget=forget, retain=retain, seed=seed, progress=progress)
