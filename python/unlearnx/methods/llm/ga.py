"""GA and GradDiff for causal LMs.

GA (gradient ascent; Jang et al., 2023, "Knowledge Unlearning for Mitigating Privacy Risks in
Language Models"; as run in TOFU, Maini et al., 2024): minimize L = -NLL_f, the negated mean
token NLL of the forget answers.

GradDiff (gradient difference; Liu et al., 2022, "Continual Learning and Private Unlearning"; TOFU):
L = gamma * (-NLL_f) + alpha * L_r, L_r the retain NLL or (retain_loss="kl") the KL divergence
KL(p_ref || p_theta) on retain answers, which needs a live frozen reference.
"""
from __future__ import annotations

from unlearnx.methods.llm.base import COMMON_DEFAULTS, LLMMethod
from unlearnx.methods.llm.losses import forward_logits, mean_nll
from unlearnx.methods.registry import register_method

__all__ = ["GA", "GradDiff"]


@register_method("ga", task="causal_lm")
class GA(LLMMethod):
    """GA: L = -NLL_f (mean token NLL of the forget answers, negated). Unbounded: it collapses the
    model if run long; TOFU runs 5 epochs at lr 1e-5."""

    loss_units = ("forget", "tokens")  # what the loss is a mean over (exact sharding, unlearnx.distributed)
    paper = ("Jang et al., 'Knowledge Unlearning for Mitigating Privacy Risks in Language Models', ACL 2023; "
             "Maini et al., 'TOFU: A Task of Fictitious Unlearning for LLMs', COLM 2024")
    defaults = dict(COMMON_DEFAULTS)

    def loss(self, model, batch):
        f = batch["forget"]
        forget_loss = -mean_nll(forward_logits(model, f), f["labels"])
        return forget_loss, {"forget_loss": forget_loss.item()}


@register_method("graddiff", task="causal_lm")
class GradDiff(LLMMethod):
    """GradDiff: L = gamma * (-NLL_f) + alpha * L_r (retain_loss "nll" or "kl"); gamma 1, alpha 1."""

    loss_units = ("forget", "tokens")  # what the loss is a mean over (exact sharding, unlearnx.distributed)
    paper = ("Liu, Lipton, Wang, 'Continual Learning and Private Unlearning', CoLLAs 2022; "
             "Maini et al., 'TOFU', COLM 2024")
    requires = ("forget", "retain")
    defaults = {**COMMON_DEFAULTS, "gamma": 1.0, "alpha": 1.0, "retain_loss": "nll"}

    def loss(self, model, batch):
        f = batch["forget"]
        return self.combine(model, batch, -mean_nll(forward_logits(model, f), f["labels"]))
