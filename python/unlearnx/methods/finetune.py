"""Retrain (the oracle), FT and ℓ1-sparse: training on the retain set D_r."""
from __future__ import annotations

import torch

from unlearnx.methods.registry import UnlearningMethod, register_method
from unlearnx.methods.training import (
    LOSSES,
    fit,
    make_optimizer,
    reinitialize,
    train_classifier,
)

__all__ = ["Retrain", "FT", "L1Sparse"]

_SGD = {"momentum": 0.9, "weight_decay": 5e-4}


def _check_choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{key} must be one of {sorted(choices)}, got {value!r}")


@register_method("retrain")
class Retrain(UnlearningMethod):
    """Retrain: re-initialise the weights with the seed and train from scratch on D_r — the exact
    unlearning oracle every metric is compared with.

    θ_u = argmin_θ Σ_{(x,y)∈D_r} ℓ(f_θ(x), y), from θ_0 ~ init(seed), by `train_classifier` with the
    recipe hyper-parameters below. Pass the SAME recipe as the original model was trained with
    (the defaults here are the small-model recipe of the unlearnx tests/benchmarks, not a paper's).
    With `seed` equal to the seed the caller built the model under, the result equals
    `torch.manual_seed(seed); m = build(); train_classifier(m, D_r, seed=seed, **recipe)`.
    `loss`: "cross_entropy" (classifiers) or "l1" / "mse" (regressors).
    """

    paper = ("the exact-unlearning baseline of every unlearning benchmark, e.g. Fan et al., "
             "'SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency', ICLR 2024")
    requires = ("retain",)
    defaults = {"epochs": 20, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4,
                "batch_size": 64, "schedule": "cosine", "loss": "cross_entropy"}

    def validate(self):
        _check_choice("optimizer", self.hparams["optimizer"], {"sgd", "adam"})
        _check_choice("schedule", self.hparams["schedule"], {"cosine", "constant"})
        _check_choice("loss", self.hparams["loss"], LOSSES)

    def run(self, model, *, forget, retain, seed, progress):
        reinitialize(model, seed)
        hp = dict(self.hparams)
        hp.pop("batch_size")  # the loader is already built with it
        return train_classifier(model, retain, seed=seed, progress=progress, **hp)


@register_method("ft")
class FT(UnlearningMethod):
    """FT (fine-tuning): continue training the original model on D_r only, relying on catastrophic
    forgetting of D_f.

    θ_u = θ_o − η Σ_steps ∇θ CE(f_θ(x_r), y_r), SGD with momentum 0.9, weight decay 5e-4, constant lr.
    Defaults (Unlearn-Sparse / SalUn reference code): lr 0.01, 10 epochs; batch 256 in the reference
    code on CIFAR's 45k retain samples — 64 here so a small data set still gets tens of steps per epoch.
    """

    paper = ("Warnecke et al., 'Machine Unlearning of Features and Labels', NDSS 2023; "
             "as run in Jia et al., 'Model Sparsity Can Simplify Machine Unlearning', NeurIPS 2023")
    requires = ("retain",)
    defaults = {"epochs": 10, "lr": 0.01, "batch_size": 64, **_SGD}

    def loss(self, model, x, y, epoch):
        return LOSSES["cross_entropy"](model, x, y, epoch)

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        opt = make_optimizer(model.parameters(), "sgd", lr=hp["lr"], momentum=hp["momentum"],
                             weight_decay=hp["weight_decay"])
        return fit(model, lambda epoch: [("retain", retain, self.loss)], epochs=hp["epochs"], optimizer=opt,
                   progress=progress, desc=self.name)


@register_method("l1_sparse")
class L1Sparse(FT):
    """ℓ1-sparse unlearning: FT on D_r with an ℓ1 penalty on all parameters, linearly decayed.

    L_t(θ) = CE(f_θ(x_r), y_r) + γ_t ‖θ‖₁,  γ_t = γ·(1 − t/(T − T₀)) for epoch t < T − T₀, else 0
    (t = 0-based epoch, T = `epochs`, T₀ = `no_l1_epochs`), as in the Unlearn-Sparse reference code.
    Defaults: lr 0.01, 10 epochs, γ 5e-4, T₀ 0; batch 64 (see FT).
    """

    paper = "Jia et al., 'Model Sparsity Can Simplify Machine Unlearning', NeurIPS 2023 (Eq. 3)"
    defaults = {**FT.defaults, "gamma": 5e-4, "no_l1_epochs": 0}

    def validate(self):
        if self.hparams["no_l1_epochs"] >= self.hparams["epochs"]:
            raise ValueError(f"no_l1_epochs must be < epochs ({self.hparams['epochs']}), "
                             f"got {self.hparams['no_l1_epochs']}")

    def gamma_at(self, epoch: int) -> float:
        """γ_t of the docstring for the 0-based epoch t."""
        span = self.hparams["epochs"] - self.hparams["no_l1_epochs"]
        return self.hparams["gamma"] * (1.0 - epoch / span) if epoch < span else 0.0

    def loss(self, model, x, y, epoch):
        ce = LOSSES["cross_entropy"](model, x, y, epoch)
        gamma = self.gamma_at(epoch)
        if gamma == 0.0:
            return ce
        return ce + gamma * torch.stack([p.abs().sum() for p in model.parameters()]).sum()
