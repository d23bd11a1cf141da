"""WAGLE: weight attribution-guided LLM unlearning (Jia et al., 2024, "WAGLE: Strategic Weight
Attribution for Effective and Modular Unlearning in Large Language Models", NeurIPS 2024).

Each weight is scored, at the original model, by its attributed influence on unlearning: the
first-order effect on the forget loss (weight x forget gradient) corrected by the retain-loss
interaction through a diagonal curvature 1/gamma:

    S_i = theta_i * g_f,i - (1/gamma) * g_r,i * g_f,i

g_f, g_r = gradients of the mean answer NLL summed over the forget batches / as many retain batches.
The top `fraction` of all weights (global ranking, unlearnx.methods.masking.global_topk_masks) is
trained by any LLM method (`base`, default "npo"; "graddiff" as in the paper too); every other
weight stays exactly at its original value (unlearnx.methods.masking.MaskedOptimizer restores them
and zeroes their AdamW state after each step).

Hyper-parameters: base ("npo"), fraction (0.2, a documented choice: the paper reports ~80%
sparsity working best), gamma (1.0, a constant curvature); the base method's own
hyper-parameters (beta, alpha, ...) are accepted as well. Full fine-tuning only (LoRA adapters
have no per-weight attribution: lora must be None).
"""
from __future__ import annotations

import torch

from unlearnx._modes import training_mode
from unlearnx.methods.llm.base import COMMON_DEFAULTS, LLMMethod, _to_device
from unlearnx.methods.llm.losses import forward_logits, mean_nll
from unlearnx.methods.registry import available, get, register_method

__all__ = ["WAGLE", "wagle_scores"]

_WAGLE_DEFAULTS = {"base": "npo", "fraction": 0.2, "gamma": 1.0}


def _summed_gradients(model, dataset, batch_size: int, max_batches: int | None = None) -> dict[str, torch.Tensor]:
    """sum over batches of grad(mean answer NLL), signed, name -> fp32 tensor (model left unchanged)."""
    device = next(model.parameters()).device
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    starts = list(range(0, len(dataset), batch_size))[:max_batches]
    for start in starts:
        batch = _to_device(dataset.collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))]),
                           device)
        grads = torch.autograd.grad(mean_nll(forward_logits(model, batch), batch["labels"]), list(params.values()),
                                    allow_unused=True)
        for (n, _), g in zip(params.items(), grads):
            if g is not None:
                acc[n].add_(g.float())
    return acc


def wagle_scores(model, forget, retain, *, gamma: float, batch_size: int) -> dict[str, torch.Tensor]:
    """S = theta * g_f - (1/gamma) g_r * g_f per weight (name -> fp32), at the current weights."""
    with training_mode(model):
        g_f = _summed_gradients(model, forget, batch_size)
        g_r = _summed_gradients(model, retain, batch_size, max_batches=-(-len(forget) // batch_size))
    theta = dict(model.named_parameters())
    return {n: theta[n].detach().float() * g - g_r[n] * g / gamma for n, g in g_f.items()}


class _WagleMixin:
    """Restricts the base method's training to the top attributed weights."""

    def validate(self):
        super().validate()
        hp = self.hparams
        if hp["lora"]:
            raise ValueError("lora must be None for wagle: LoRA adapters have no per-weight attribution")
        if not 0 < hp["fraction"] <= 1:
            raise ValueError(f"fraction must lie in (0, 1], got {hp['fraction']!r}")
        if hp["gamma"] <= 0:
            raise ValueError(f"gamma must be > 0, got {hp['gamma']!r}")

    def setup(self, model, *, forget, retain, progress):
        from unlearnx.methods.masking import global_topk_masks

        super().setup(model, forget=forget, retain=retain, progress=progress)
        hp = self.hparams
        scores = wagle_scores(model, forget, retain, gamma=hp["gamma"], batch_size=hp["batch_size"])
        self.masks = global_topk_masks(scores, hp["fraction"])

    def make_optimizer(self, model, params):
        from unlearnx.methods.masking import MaskedOptimizer, masks_by_param

        return MaskedOptimizer(super().make_optimizer(model, params), masks_by_param(model, self.masks))


@register_method("wagle", task="causal_lm")
class WAGLE(LLMMethod):
    """WAGLE: any LLM method (`base`) restricted to the top `fraction` of attributed weights."""

    paper = ("Jia, Liu, Zhang, Zhang, Ram, Baracaldo, Liu, 'WAGLE: Strategic Weight Attribution for Effective "
             "and Modular Unlearning in Large Language Models', NeurIPS 2024")
    requires = ("forget", "retain")
    defaults = {**COMMON_DEFAULTS, **_WAGLE_DEFAULTS}

    @classmethod
    def defaults_for(cls, hparams):
        base_name = hparams.get("base", _WAGLE_DEFAULTS["base"])
        if not isinstance(base_name, str) or base_name == "wagle" or base_name not in available("causal_lm"):
            return cls.defaults  # the instance refuses the base, naming it
        return {**get(base_name, "causal_lm").defaults, **_WAGLE_DEFAULTS}

    def __new__(cls, **hparams):
        base_name = hparams.get("base", _WAGLE_DEFAULTS["base"])
        if not isinstance(base_name, str) or base_name in ("wagle",):
            raise ValueError(f"base must be the name of another LLM method, got {base_name!r}")
        base = get(base_name, "causal_lm")
        if not base.trains:
            raise ValueError(f"base must be a training method; {base_name!r} edits weights without a loop")
        combined = type(f"WAGLE[{base_name}]", (_WagleMixin, base), {
            "defaults": cls.defaults_for(hparams), "name": "wagle", "paper": cls.paper,
            "requires": ("forget", "retain")})
        return combined(**hparams)
