"""FLAT: LLM unlearning via loss adjustment with only forget data (Wang et al., 2025, ICLR).

No retain data, no reference model. For each forget question, a template (refusal) answer e and the
forget answer f; P_e, P_f = mean per-token probability of each answer under the model. FLAT maximizes
the variational form of an f-divergence between the two, i.e. minimizes

    L = -g(P_e) + f*(g(P_f))            (mean over the batch)

with the activation g and the convex conjugate f* of the f-GAN table (Nowozin et al., 2016):

    divergence          g(v)                    f*(t)
    kl                  v                       exp(t - 1)
    reverse_kl          -exp(-v)                -1 - log(-t)
    jeffrey             v                       W(e^(1-t)) + 1/W(e^(1-t)) + t - 2   (W: Lambert W)
    squared_hellinger   1 - exp(-v)             t / (1 - t)
    pearson             v                       t^2/4 + t
    neyman              1 - exp(-v)             2 - 2 sqrt(1 - t)
    js                  log 2 - log(1 + e^-v)   -log(2 - exp(t))
    tv                  tanh(v) / 2             t
"""
from __future__ import annotations

import math

import torch

from unlearnx.methods.llm.base import COMMON_DEFAULTS, LLMMethod
from unlearnx.methods.llm.losses import forward_logits, mean_token_prob
from unlearnx.methods.registry import register_method

__all__ = ["FLAT", "DIVERGENCES", "lambert_w", "flat_loss"]


def lambert_w(x: torch.Tensor) -> torch.Tensor:
    """Principal branch W(x) for x > 0 (w e^w = x), differentiable: dW/dx = W / (x (1 + W))."""
    with torch.no_grad():
        w = torch.log1p(x)
        for _ in range(30):  # Halley's iteration; converges in a handful of steps from log1p(x)
            ew = torch.exp(w)
            f = w * ew - x
            w = w - f / (ew * (w + 1) - (w + 2) * f / (2 * w + 2))
    dw = w / (x.detach() * (1 + w))
    return w + dw * (x - x.detach())


DIVERGENCES = {
    "kl": (lambda v: v, lambda t: torch.exp(t - 1)),
    "reverse_kl": (lambda v: -torch.exp(-v), lambda t: -1 - torch.log(-t)),
    "jeffrey": (lambda v: v, lambda t: (lambda w: w + 1 / w + t - 2)(lambert_w(torch.exp(1 - t)))),
    "squared_hellinger": (lambda v: 1 - torch.exp(-v), lambda t: t / (1 - t)),
    "pearson": (lambda v: v, lambda t: t * t / 4 + t),
    "neyman": (lambda v: 1 - torch.exp(-v), lambda t: 2 - 2 * torch.sqrt(1 - t)),
    "js": (lambda v: math.log(2.0) - torch.nn.functional.softplus(-v), lambda t: -torch.log(2 - torch.exp(t))),
    "tv": (lambda v: torch.tanh(v) / 2, lambda t: t),
}


def flat_loss(p_template: torch.Tensor, p_forget: torch.Tensor, divergence: str) -> torch.Tensor:
    """-g(P_e) + f*(g(P_f)), mean over the batch; P_e, P_f [B] mean token probabilities."""
    g, conj = DIVERGENCES[divergence]
    return (-g(p_template) + conj(g(p_forget))).mean()


@register_method("flat", task="causal_lm")
class FLAT(LLMMethod):
    """FLAT: f-divergence between refusal (template) and forget answers, forget data only; divergence "kl"."""

    paper = ("Wang, Wei, Liu, Liu, 'LLM Unlearning via Loss Adjustment with Only Forget Data', ICLR 2025; "
             "Nowozin, Cseke, Tomioka, 'f-GAN', NeurIPS 2016")
    uses_refusals = True
    defaults = {**COMMON_DEFAULTS, "divergence": "kl"}

    def validate(self):
        super().validate()
        if self.hparams["divergence"] not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {sorted(DIVERGENCES)}, got {self.hparams['divergence']!r}")

    def loss(self, model, batch):
        e, f = batch["idk"], batch["forget"]
        p_e = mean_token_prob(forward_logits(model, e), e["labels"])
        p_f = mean_token_prob(forward_logits(model, f), f["labels"])
        loss = flat_loss(p_e, p_f, self.hparams["divergence"])
        return loss, {"forget_loss": loss.item(), "p_forget": p_f.mean().item()}
