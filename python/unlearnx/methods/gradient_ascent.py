"""GA: gradient ascent on the forget set."""
from __future__ import annotations

import torch.nn.functional as F

from unlearnx.methods.registry import UnlearningMethod, register_method
from unlearnx.methods.training import fit, make_optimizer

__all__ = ["GA"]


@register_method("ga")
class GA(UnlearningMethod):
    """GA (gradient ascent): maximise the loss on D_f, i.e. minimise L(θ) = −CE(f_θ(x_f), y_f).

    SGD with momentum 0.9, weight decay 5e-4, constant lr. Defaults (Unlearn-Sparse reference
    code): lr 1e-4, 5 epochs; batch 64 (256 in the reference code, see FT). GA is unbounded:
    a large lr or many epochs collapse the model (a non-finite loss raises FloatingPointError).
    """

    paper = ("Thudi et al., 'Unrolling SGD: Understanding Factors Influencing Machine Unlearning', "
             "EuroS&P 2022; as run in Jia et al., NeurIPS 2023")
    requires = ("forget",)
    defaults = {"epochs": 5, "lr": 1e-4, "batch_size": 64, "momentum": 0.9, "weight_decay": 5e-4}

    @staticmethod
    def loss(model, x, y, epoch):
        return -F.cross_entropy(model(x), y)

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        opt = make_optimizer(model.parameters(), "sgd", lr=hp["lr"], momentum=hp["momentum"],
                             weight_decay=hp["weight_decay"])
        return fit(model, lambda epoch: [("forget", forget, self.loss)], epochs=hp["epochs"], optimizer=opt,
                   progress=progress, desc=self.name)
