"""WHP (Who's Harry Potter) and task-vector negation: both start from a *reinforced* model, the
original fine-tuned further on the forget data, which knows the forget content better.

WHP (Eldan & Russinovich, 2023, "Who's Harry Potter? Approximate Unlearning in LLMs"): generic
logits v = v_base - alpha * ReLU(v_reinforced - v_base) (tokens the reinforced model boosts are
pushed down), alpha 4 (methods.md range 4-256). Variants:
  "finetune"  (default) the generic prediction argmax_v at each forget answer position becomes the
              label; the original is fine-tuned on those labels. The labels are fixed, so they are
              computed once and the reinforced model is dropped before training.
  "inference" no training; res.model is a `ULDModel(..., mode="whp")` whose logits are log_softmax of
  the generic logits (the fused logit_diff op), with two-cache generation.
The paper's anchored-term replacement (an entity dictionary) is not implemented: the generic
targets come from the logit rule alone.

Task vector (Ilharco et al., 2023, "Editing Models with Task Arithmetic"): theta_u = theta -
alpha * (theta_reinforced - theta), alpha 1; no training loop beyond the reinforcement.

Reinforcement: `reinforce_epochs` (3) epochs of NLL fine-tuning on the forget set at
`reinforce_lr` (1e-5, the paper scale for 7B models), batch `batch_size`, through
unlearnx.models.lm_training.finetune_lm; under lora=... the reinforcement trains LoRA adapters
(a low-rank task vector).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from unlearnx._modes import training_mode
from unlearnx.data.lm_batches import IGNORE_INDEX
from unlearnx.methods.llm.base import COMMON_DEFAULTS, LLMMethod, _to_device, default_lora_config
from unlearnx.methods.llm.losses import forward_logits, mean_nll, shifted_labels
from unlearnx.methods.registry import register_method

__all__ = ["WHP", "TaskVector", "reinforced_model", "generic_logits"]

_REINFORCE = {"reinforce_epochs": 3, "reinforce_lr": 1e-5}


def reinforced_model(model: nn.Module, forget, *, epochs: int, lr: float, batch_size: int, lora, seed: int,
                     progress: bool) -> nn.Module:
    """A copy of `model` fine-tuned on the forget set (LoRA adapters merged when lora is set)."""
    from unlearnx.models.lm_training import finetune_lm

    reinforced = copy.deepcopy(model)
    if lora:
        from peft import get_peft_model

        reinforced = get_peft_model(reinforced, default_lora_config() if lora is True else copy.deepcopy(lora))
    finetune_lm(reinforced, forget, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
    if lora:
        reinforced = reinforced.merge_and_unload()
    return reinforced.eval().requires_grad_(False)


def generic_logits(base_logits: torch.Tensor, reinforced_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """v_base - alpha * ReLU(v_reinforced - v_base), elementwise (any shape)."""
    return base_logits - alpha * torch.relu(reinforced_logits - base_logits)


@register_method("whp", task="causal_lm")
class WHP(LLMMethod):
    """WHP: fine-tune on generic predictions (variant "finetune") or mix logits at inference ("inference")."""

    paper = "Eldan, Russinovich, 'Who's Harry Potter? Approximate Unlearning in LLMs', 2023"
    defaults = {**COMMON_DEFAULTS, **_REINFORCE, "alpha": 4.0, "variant": "finetune"}

    def validate(self):
        super().validate()
        if self.hparams["variant"] not in ("finetune", "inference"):
            raise ValueError(f"variant must be 'finetune' or 'inference', got {self.hparams['variant']!r}")

    @property
    def trains(self):
        return self.hparams["variant"] == "finetune"

    def _reinforce(self, model, forget, progress):
        hp = self.hparams
        return reinforced_model(model, forget, epochs=hp["reinforce_epochs"], lr=hp["reinforce_lr"],
                                batch_size=hp["batch_size"], lora=hp["lora"], seed=self.seed, progress=progress)

    def apply(self, model, forget, progress):
        """variant="inference": the mixture of the original and the reinforced model."""
        from unlearnx.methods.llm.uld_model import ULDModel

        # The fused logit-combination op and the two-cache decoding loop ULD uses, in WHP's mode.
        return ULDModel(model, self._reinforce(model, forget, progress), weight=self.hparams["alpha"], mode="whp")

    def setup(self, model, *, forget, retain, progress):
        reinforced = self._reinforce(model, forget, progress)
        device = next(model.parameters()).device
        self.generic_labels = []  # per forget example: the generic label of each answer position
        with training_mode(model), torch.no_grad():
            for i in range(len(forget)):
                b = _to_device(forget.collate([forget[i]]), device)
                v = generic_logits(forward_logits(model, b), forward_logits(reinforced, b), self.hparams["alpha"])
                mask = shifted_labels(b["labels"])[0] != IGNORE_INDEX
                self.generic_labels.append(v[0][mask].argmax(-1).cpu())

    def loss(self, model, batch):
        f = batch["forget"]
        # Labels: the real answer positions, carrying the generic tokens instead of the answer.
        generic = f["labels"].clone()
        mask = shifted_labels(f["labels"]) != IGNORE_INDEX
        targets = torch.cat([self.generic_labels[i] for i in f["index"].tolist()]).to(generic.device)
        shifted_positions = torch.zeros_like(mask)
        shifted_positions[:, 1:] = mask[:, :-1]
        generic[shifted_positions] = targets
        loss = mean_nll(forward_logits(model, f), generic)
        return loss, {"forget_loss": loss.item()}


@register_method("task_vector", task="causal_lm")
class TaskVector(LLMMethod):
    """Task-vector negation: theta - alpha * (theta_reinforced - theta); alpha 1."""

    paper = "Ilharco et al., 'Editing Models with Task Arithmetic', ICLR 2023"
    trains = False
    defaults = {**COMMON_DEFAULTS, **_REINFORCE, "alpha": 1.0}

    def apply(self, model, forget, progress):
        hp = self.hparams
        reinforced = reinforced_model(model, forget, epochs=hp["reinforce_epochs"], lr=hp["reinforce_lr"],
                                      batch_size=hp["batch_size"], lora=hp["lora"], seed=self.seed,
                                      progress=progress)
        with torch.no_grad():
            tuned = dict(reinforced.named_parameters())
            for name, p in model.named_parameters():
                p.sub_(hp["alpha"] * (tuned[name] - p))
        return model
