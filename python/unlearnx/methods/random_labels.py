"""RL: random-label unlearning (the base loop of SalUn)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unlearnx.methods.registry import UnlearningMethod, register_method
from unlearnx.methods.training import fit, make_optimizer

__all__ = ["RL"]


@register_method("rl")
class RL(UnlearningMethod):
    """RL (random labels): each epoch, one pass over D_f with labels drawn uniformly from all K
    classes (fresh draws every epoch; the true class may be drawn), then one pass over D_r with
    the true labels, minimising CE in both passes:

        epoch e:  Σ_{x∈D_f} CE(f_θ(x), ỹ),  ỹ ~ U{0..K−1};   then  Σ_{(x,y)∈D_r} CE(f_θ(x), y)

    (the CIFAR-10 branch of the SalUn reference code; K is read from the model's output width).
    SGD with momentum 0.9, weight decay 5e-4, constant lr. Defaults as SalUn: lr 0.013, 10 epochs;
    batch 64 (256 in the reference code, see FT). Subclasses (SalUn) override `make_optimizer`
    to mask the update.
    """

    paper = ("Golatkar et al., 'Eternal Sunshine of the Spotless Net', CVPR 2020 (random labels); "
             "as run in Fan et al., 'SalUn', ICLR 2024")
    defaults = {"epochs": 10, "lr": 0.013, "batch_size": 64, "momentum": 0.9, "weight_decay": 5e-4}

    def make_optimizer(self, model: nn.Module, forget) -> torch.optim.Optimizer:
        hp = self.hparams
        return make_optimizer(model.parameters(), "sgd", lr=hp["lr"], momentum=hp["momentum"],
                              weight_decay=hp["weight_decay"])

    def run(self, model, *, forget, retain, seed, progress):
        # A dedicated generator keeps the label draws independent of dropout or other RNG use.
        gen = torch.Generator().manual_seed(seed)

        def random_label_loss(model, x, y, epoch):
            logits = model(x)
            fake = torch.randint(logits.shape[1], y.shape, generator=gen).to(logits.device)
            return F.cross_entropy(logits, fake)

        def true_label_loss(model, x, y, epoch):
            return F.cross_entropy(model(x), y)

        opt = self.make_optimizer(model, forget)
        return fit(model, lambda epoch: [("forget", forget, random_label_loss), ("retain", retain, true_label_loss)],
                   epochs=self.hparams["epochs"], optimizer=opt, progress=progress, desc=self.name)
