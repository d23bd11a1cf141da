"""IdkNLL and IdkDPO: teach refusals ("I don't know") for the forget questions (TOFU, Maini et al., 2024).

The refusal answers are drawn per forget question from unlearnx.data.lm_batches.REFUSAL_TEMPLATES
(seeded), and arrive as batch["idk"], aligned with batch["forget"].

IdkNLL:  L = gamma * NLL(refusal answers) + alpha * L_r.
IdkDPO:  DPO (Rafailov et al., 2023) with preferred y_w = refusal, dispreferred y_l = forget answer:
    L_f = -(2/beta) mean log sigmoid(beta * [(log pi_theta(y_w) - log pi_ref(y_w)) - (log pi_theta(y_l) - log pi_ref(y_l))])
  (the 2/beta scale of open-unlearning, so that beta only sets the sharpness), beta 0.1; the reference
  log-probs of both answers are cached once (reference="cached") or come from a live reference.
"""
from __future__ import annotations

import torch.nn.functional as F

from unlearnx.methods.llm.base import COMMON_DEFAULTS, LLMMethod, cached_sequence_logprobs
from unlearnx.methods.llm.losses import forward_logits, mean_nll, sequence_logprob
from unlearnx.methods.llm.npo import NPO
from unlearnx.methods.registry import register_method

__all__ = ["IdkNLL", "IdkDPO"]


@register_method("idknll", task="causal_lm")
class IdkNLL(LLMMethod):
    """IdkNLL: NLL on refusal answers to the forget questions (+ alpha * retain); gamma 1, alpha 1."""

    loss_units = ("idk", "tokens")  # what the loss is a mean over (exact sharding, unlearnx.distributed)
    paper = "Maini et al., 'TOFU: A Task of Fictitious Unlearning for LLMs', COLM 2024"
    uses_refusals = True
    defaults = {**COMMON_DEFAULTS, "gamma": 1.0, "alpha": 1.0, "retain_loss": "nll"}

    def loss(self, model, batch):
        idk = batch["idk"]
        return self.combine(model, batch, mean_nll(forward_logits(model, idk), idk["labels"]))


@register_method("idkdpo", task="causal_lm")
class IdkDPO(NPO):
    """IdkDPO: DPO towards refusals, away from forget answers; beta 0.1, gamma 1, alpha 1."""

    paper = ("Maini et al., 'TOFU', COLM 2024; Rafailov et al., 'Direct Preference Optimization: Your "
             "Language Model is Secretly a Reward Model', NeurIPS 2023")
    uses_refusals = True
    defaults = {**COMMON_DEFAULTS, "beta": 0.1, "gamma": 1.0, "alpha": 1.0, "retain_loss": "nll",
                "reference": "auto"}

    def cache_reference(self, model, forget, progress):
        for key in ("forget", "idk"):
            self.ref_cache[key] = cached_sequence_logprobs(model, forget, key, batch_size=self.hparams["batch_size"],
                                                           peft=self._peft, progress=progress)

    def loss(self, model, batch):
        beta = self.hparams["beta"]
        win, lose = batch["idk"], batch["forget"]
        win_lp = sequence_logprob(forward_logits(model, win), win["labels"])
        lose_lp = sequence_logprob(forward_logits(model, lose), lose["labels"])
        margin = (win_lp - self.reference_logprob(batch, "idk")) - (lose_lp - self.reference_logprob(batch, "forget"))
        return self.combine(model, batch, -(2.0 / beta) * F.logsigmoid(beta * margin).mean())
