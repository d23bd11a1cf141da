"""Teacher–student unlearning: SCRUB and Bad teacher."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Subset

from unlearnx.methods.registry import UnlearningMethod, register_method
from unlearnx.methods.training import FlaggedDataset, dataset_of, fit, make_optimizer, reinitialize

__all__ = ["SCRUB", "BadTeacher", "distill_kl"]


def distill_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_t ‖ p_s) · T², batch mean: Σ_c p_t,c (log p_t,c − log softmax(z_s / T)_c) · T² / B.

    student_logits `[B, C]`; teacher_probs `[B, C]` (already softmax(z_t / T)); the Hinton et al.
    distillation loss as in the SCRUB reference code (DistillKL).
    """
    log_ps = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_ps, teacher_probs, reduction="batchmean") * temperature**2


def _frozen_copy(model: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


@register_method("scrub")
class SCRUB(UnlearningMethod):
    """SCRUB: the student (the model, initialised from θ_o) moves away from the frozen original
    teacher on D_f and stays close to it on D_r, in alternating max and min epochs:

        max step (epochs < `max_steps`), on D_f:  minimise −KL(p_T(x_f) ‖ p_S(x_f))
        min step (every epoch), on D_r:          minimise γ·CE(f_S(x_r), y_r) + α·KL(p_T(x_r) ‖ p_S(x_r))

    with p = softmax(z / T), KL scaled by T² (`distill_kl`). Defaults (SCRUB reference code, small-
    scale CIFAR setting): T = 4, α = 0.001, γ = 0.99, 5 epochs of which the first 2 have a max step,
    SGD lr 5e-4, momentum 0.9, weight decay 5e-4, lr ×0.1 at epoch 3 (`lr_decay_epochs`), retain
    batch 128, forget batch 32 (`forget_batch_size`). The reference's optional β·(other KD) term is 0
    there and omitted.
    """

    paper = "Kurmanji et al., 'Towards Unbounded Machine Unlearning', NeurIPS 2023 (Eq. 4-6)"
    defaults = {"epochs": 5, "max_steps": 2, "lr": 5e-4, "momentum": 0.9, "weight_decay": 5e-4,
                "lr_decay_epochs": (3,), "lr_decay_rate": 0.1, "temperature": 4.0, "alpha": 0.001,
                "gamma": 0.99, "batch_size": 128, "forget_batch_size": 32}

    def validate(self):
        hp = self.hparams
        if hp["max_steps"] > hp["epochs"]:
            raise ValueError(f"max_steps must be <= epochs ({hp['epochs']}), got {hp['max_steps']}")
        milestones = hp["lr_decay_epochs"]
        if not isinstance(milestones, (tuple, list)) or not all(
                isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in milestones):
            raise ValueError(f"lr_decay_epochs must be a sequence of epoch indices >= 0, got {milestones!r}")
        if not 0 < hp["lr_decay_rate"] <= 1:
            raise ValueError(f"lr_decay_rate must be in (0, 1], got {hp['lr_decay_rate']}")

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        teacher = _frozen_copy(model)
        temp = hp["temperature"]
        opt = make_optimizer(model.parameters(), "sgd", lr=hp["lr"], momentum=hp["momentum"],
                             weight_decay=hp["weight_decay"])

        def teacher_probs(x):
            with torch.no_grad():
                return F.softmax(teacher(x) / temp, dim=1)

        def max_loss(model, x, y, epoch):
            return -distill_kl(model(x), teacher_probs(x), temp)

        def min_loss(model, x, y, epoch):
            logits = model(x)
            return hp["gamma"] * F.cross_entropy(logits, y) + hp["alpha"] * distill_kl(logits, teacher_probs(x), temp)

        def passes(epoch):
            # Step decay at the reference code's epoch milestones (set here, at the start of each epoch).
            decays = sum(1 for m in hp["lr_decay_epochs"] if epoch >= m)
            for group in opt.param_groups:
                group["lr"] = hp["lr"] * hp["lr_decay_rate"] ** decays
            steps = [("forget", forget, max_loss)] if epoch < hp["max_steps"] else []
            return steps + [("retain", retain, min_loss)]

        return fit(model, passes, epochs=hp["epochs"], optimizer=opt, progress=progress, desc=self.name)


@register_method("bad_teacher")
class BadTeacher(UnlearningMethod):
    """Bad teacher (competent/incompetent teacher): the student (initialised from θ_o) distills the
    frozen original model on retain samples and a randomly initialised model on forget samples:

        p*(x) = l_x · softmax(z_bad(x) / T) + (1 − l_x) · softmax(z_o(x) / T),  l_x = 1[x ∈ D_f]
        minimise KL(p*(x) ‖ softmax(z_S(x) / T)) over D_f ∪ (a random `retain_fraction` of D_r)

    Defaults (reference code): 1 epoch, Adam lr 1e-4, T = 1, 30% of D_r, batch 256; the KL here is the
    batch mean (the reference's element-wise mean differs by the constant 1/K, absorbed by Adam).
    The incompetent teacher is the model's architecture re-initialised with the seed.
    """

    paper = ("Chundawat et al., 'Can Bad Teaching Induce Forgetting? Unlearning in Deep Networks using "
             "an Incompetent Teacher', AAAI 2023")
    defaults = {"epochs": 1, "lr": 1e-4, "temperature": 1.0, "retain_fraction": 0.3, "batch_size": 256}

    def validate(self):
        if not 0 < self.hparams["retain_fraction"] <= 1:
            raise ValueError(f"retain_fraction must be in (0, 1], got {self.hparams['retain_fraction']}")

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        competent = _frozen_copy(model)
        incompetent = reinitialize(_frozen_copy(model), seed + 1)  # not the seed of a Retrain at `seed`
        temp = hp["temperature"]
        gen = torch.Generator().manual_seed(seed)
        retain_ds = dataset_of(retain, "retain")
        n_keep = max(1, round(hp["retain_fraction"] * len(retain_ds)))
        keep = torch.randperm(len(retain_ds), generator=gen)[:n_keep].tolist()
        data = ConcatDataset([FlaggedDataset(dataset_of(forget, "forget"), 1.0), FlaggedDataset(Subset(retain_ds, keep), 0.0)])
        loader = DataLoader(data, batch_size=hp["batch_size"], shuffle=True, generator=gen)

        def bad_teacher_loss(model, x, flag, epoch):
            with torch.no_grad():
                flag = flag.to(x.dtype).unsqueeze(1)
                target = flag * F.softmax(incompetent(x) / temp, 1) + (1 - flag) * F.softmax(competent(x) / temp, 1)
            return distill_kl(model(x), target, temp) / temp**2  # the paper's KL is not T²-scaled

        opt = make_optimizer(model.parameters(), "adam", lr=hp["lr"])
        return fit(model, lambda epoch: [("mixed", loader, bad_teacher_loss)], epochs=hp["epochs"], optimizer=opt,
                   progress=progress, desc=self.name)
