"""UNDIAL: unlearning via self-distillation with adjusted logits (Dong et al., 2024, "UNDIAL:
Self-Distillation with Adjusted Logits for Robust Unlearning in Large Language Models").

On every forget answer token t with label y_t, the target is the reference distribution with the
label's logit lowered by beta:

    q_t = softmax(z_ref,t - beta * onehot(y_t)),      L_f = mean_t CE(q_t, p_theta,t)   (beta 10)

(CE(q, p) = KL(q || p) + H(q); H(q) is constant, so the gradient is the KL's.) The reference logits
on forget answers are fixed: reference="cached" (default) stores them for the answer tokens only
(N_answer_tokens x V values, in the model's dtype, on the model's device); "live" keeps a frozen
reference instead (less memory for large vocabularies and forget sets).
"""
from __future__ import annotations

import contextlib

import torch

from unlearnx._modes import training_mode
from unlearnx.methods.llm.base import COMMON_DEFAULTS, LLMMethod, _to_device
from unlearnx.methods.llm.losses import forward_logits, shifted_labels
from unlearnx.methods.registry import register_method
from unlearnx.data.lm_batches import IGNORE_INDEX

__all__ = ["UNDIAL"]


@register_method("undial", task="causal_lm")
class UNDIAL(LLMMethod):
    """UNDIAL: distill to softmax(z_ref - beta * onehot(y)) on forget answer tokens; beta 10."""

    loss_units = ("forget", "tokens")  # what the loss is a mean over (exact sharding, unlearnx.distributed)
    paper = ("Dong, Lin, Belkin, Huerta, Vulic, 'UNDIAL: Self-Distillation with Adjusted Logits for Robust "
             "Unlearning in Large Language Models', NAACL 2025")
    reference_needs = "forget_logits"
    defaults = {**COMMON_DEFAULTS, "beta": 10.0, "gamma": 1.0, "alpha": 0.0, "retain_loss": "nll",
                "reference": "auto"}

    def cache_reference(self, model, forget, progress):
        ds = forget.datasets["forget"]
        device = next(model.parameters()).device
        rows = []
        ctx = self._peft.disable_adapter() if self._peft is not None else contextlib.nullcontext()
        with training_mode(model), torch.no_grad(), ctx:
            for i in range(0, len(ds), self.hparams["batch_size"]):
                b = _to_device(ds.collate([ds[j] for j in range(i, min(len(ds), i + self.hparams["batch_size"]))]), device)
                logits = forward_logits(model, b)
                mask = shifted_labels(b["labels"]) != IGNORE_INDEX
                rows += [logits[k][mask[k]] for k in range(logits.shape[0])]
        self.ref_cache["forget_logits"] = rows  # per example: [answer tokens, V]

    def loss(self, model, batch):
        f = batch["forget"]
        logits = forward_logits(model, f)
        target = shifted_labels(f["labels"])
        mask = target != IGNORE_INDEX
        if "forget_logits" in self.ref_cache:
            ref = torch.cat([self.ref_cache["forget_logits"][i] for i in f["index"].tolist()])
        else:
            ref = self.reference_logits(f)[mask]
        y = target[mask]
        adjusted = ref.float().clone()
        adjusted[torch.arange(len(y), device=y.device), y] -= self.hparams["beta"]
        q = adjusted.softmax(-1)
        forget_loss = -(q * logits[mask].float().log_softmax(-1)).sum(-1).mean()
        return self.combine(model, batch, forget_loss)
