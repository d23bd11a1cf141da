"""WGA: weighted gradient ascent (Wang et al., 2025, "Rethinking LLM Unlearning Objectives: A Gradient
Perspective and Go Beyond", ICLR 2025).

Each forget token's ascent is weighted by the model's own (detached) confidence in it:

    L_f = -mean_t w_t * CE_t,     w_t = p_theta(y_t)^beta (no gradient),   beta 1
    L   = gamma * L_f + alpha * L_r      (the retain term when retain data is given; gamma 1, alpha 1)

so tokens already forgotten (small p) stop being pushed, which keeps GA from diverging.
"""
from __future__ import annotations

from unlearnx.methods.llm.base import COMMON_DEFAULTS, LLMMethod
from unlearnx.methods.llm.losses import answer_logprobs, forward_logits
from unlearnx.methods.registry import register_method

__all__ = ["WGA"]


@register_method("wga", task="causal_lm")
class WGA(LLMMethod):
    """WGA: L_f = -mean_t p(y_t)^beta.detach() * CE_t; beta 1."""

    loss_units = ("forget", "tokens")  # what the loss is a mean over (exact sharding, unlearnx.distributed)
    paper = ("Wang, Zhang, Liu, Han, Cheng, 'Rethinking LLM Unlearning Objectives: A Gradient Perspective "
             "and Go Beyond', ICLR 2025")
    defaults = {**COMMON_DEFAULTS, "beta": 1.0, "gamma": 1.0, "alpha": 1.0, "retain_loss": "nll"}

    def loss(self, model, batch):
        f = batch["forget"]
        logp, mask = answer_logprobs(forward_logits(model, f), f["labels"])
        weight = (self.hparams["beta"] * logp.detach()).exp()  # p^beta, computed in log space
        # CE_t = -logp; the loss is -mean(w * CE) = mean(w * logp) over answer tokens.
        forget_loss = (weight * logp * mask).sum() / mask.sum().clamp(min=1)
        return self.combine(model, batch, forget_loss)
