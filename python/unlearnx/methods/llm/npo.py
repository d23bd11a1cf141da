"""NPO and SimNPO.

NPO (Zhang et al., 2024, "Negative Preference Optimization: From Catastrophic Collapse to Effective
Unlearning"), sequence level, with log pi(y|x) = sum of the answer's token log-probabilities:

    L_f = -(2/beta) * mean_b log sigmoid(-beta * (log pi_theta(y|x) - log pi_ref(y|x)))       beta 0.1

pi_ref on forget data is fixed: it is computed once before training and cached per example
(reference="cached", default), or taken from a frozen live copy (reference="live"; with LoRA the
adapters are disabled instead of copying). NPO+RT adds alpha * L_r (retain NLL or KL).

SimNPO (Fan et al., 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM
Unlearning"), reference-free, length-normalized:

    L_f = -(2/beta) * mean_b log sigmoid(-(beta/|y|) * log pi_theta(y|x) - delta)
    L   = gamma * L_f + alpha * L_r                       beta 4.5, delta 0, gamma 0.125, alpha 1
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearnx.methods.llm.base import COMMON_DEFAULTS, LLMMethod, cached_sequence_logprobs
from unlearnx.methods.llm.losses import forward_logits, sequence_logprob
from unlearnx.methods.registry import register_method

__all__ = ["NPO", "SimNPO", "npo_loss"]


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """-(2/beta) mean log sigmoid(-beta (logp - ref_logp)); logp, ref_logp [B] sequence log-probs."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


@register_method("npo", task="causal_lm")
class NPO(LLMMethod):
    """NPO (+ retain when retain data is given and alpha > 0): beta 0.1, gamma 1, alpha 1."""

    loss_units = ("forget", "samples")  # what the loss is a mean over (exact sharding, unlearnx.distributed)
    paper = ("Zhang, Lin, Bai, Mei, 'Negative Preference Optimization: From Catastrophic Collapse to "
             "Effective Unlearning', COLM 2024")
    reference_needs = "forget_logprob"
    defaults = {**COMMON_DEFAULTS, "beta": 0.1, "gamma": 1.0, "alpha": 1.0, "retain_loss": "nll",
                "reference": "auto"}

    def validate(self):
        super().validate()
        if self.hparams["beta"] <= 0:
            raise ValueError(f"beta must be > 0, got {self.hparams['beta']!r}")

    def cache_reference(self, model, forget, progress):
        self.ref_cache["forget"] = cached_sequence_logprobs(model, forget, "forget", batch_size=self.hparams["batch_size"],
                                                            peft=self._peft, progress=progress)

    def reference_logprob(self, batch, key: str = "forget") -> torch.Tensor:
        """log pi_ref(y|x) [B] of batch[key]: from the cache (by example index) or the live reference."""
        b = batch[key]
        if key in self.ref_cache:
            return self.ref_cache[key].to(b["input_ids"].device)[batch["forget"]["index"]]
        return sequence_logprob(self.reference_logits(b), b["labels"])

    def loss(self, model, batch):
        f = batch["forget"]
        logp = sequence_logprob(forward_logits(model, f), f["labels"])
        return self.combine(model, batch, npo_loss(logp, self.reference_logprob(batch), self.hparams["beta"]))


@register_method("simnpo", task="causal_lm")
class SimNPO(LLMMethod):
    """SimNPO: beta 4.5, delta 0, gamma 0.125, alpha 1 (retain NLL or KL)."""

    loss_units = ("forget", "samples")  # what the loss is a mean over (exact sharding, unlearnx.distributed)
    paper = ("Fan, Liu, Lin, Jia, Zhang, Mei, Liu, 'Simplicity Prevails: Rethinking Negative Preference "
             "Optimization for LLM Unlearning', 2024")
    defaults = {**COMMON_DEFAULTS, "beta": 4.5, "delta": 0.0, "gamma": 0.125, "alpha": 1.0, "retain_loss": "nll"}

    def validate(self):
        super().validate()
        if self.hparams["beta"] <= 0:
            raise ValueError(f"beta must be > 0, got {self.hparams['beta']!r}")

    def loss(self, model, batch):
        f = batch["forget"]
        hp = self.hparams
        mean_logp = sequence_logprob(forward_logits(model, f), f["labels"], normalize=True)
        forget_loss = -(2.0 / hp["beta"]) * F.logsigmoid(-hp["beta"] * mean_logp - hp["delta"]).mean()
        return self.combine(model, batch, forget_loss)
