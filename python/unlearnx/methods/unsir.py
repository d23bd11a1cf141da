"""UNSIR: unlearning by error-maximising noise, an impair step and a repair step.

Tarun, Chundawat, Mandal, Kankanhalli, "Fast Yet Effective Machine Unlearning", IEEE TNNLS 2023,
arXiv:2111.08947.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Subset, TensorDataset

from unlearnx._modes import training_mode
from unlearnx.data.datasets import labels_of
from unlearnx.methods.registry import UnlearningMethod, register_method
from unlearnx.methods.training import dataset_of, fit, make_optimizer, model_device

__all__ = ["UNSIR", "error_maximizing_noise"]


def error_maximizing_noise(model: nn.Module, target: int, shape: tuple[int, ...], *, steps: int, lr: float,
                           weight: float, seed: int) -> torch.Tensor:
    """UNSIR's noise for class `target`: N [shape] (a batch of inputs), N₀ ~ N(0, I), minimising

        L(N) = −CE(f(N), target) + weight · mean_i ‖N_i‖₂²

    with Adam(lr) for `steps` steps (the model frozen, in eval mode): inputs the model maps as far
    as possible from `target` while the norm term keeps them bounded (the paper's noise objective, λ = `weight`).
    """
    device = model_device(model)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device).requires_grad_(True)
    opt = torch.optim.Adam([noise], lr=lr)
    labels = torch.full((shape[0],), int(target), dtype=torch.long, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with training_mode(model, train=False):
            for _ in range(steps):
                loss = -F.cross_entropy(model(noise), labels) + weight * noise.pow(2).flatten(1).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        for p in params:
            p.requires_grad_(True)
    return noise.detach()


@register_method("unsir")
class UNSIR(UnlearningMethod):
    """UNSIR (class unlearning): for every class c in D_f, learn error-maximising noise N_c
    (`error_maximizing_noise`: `noise_batch` inputs, `noise_steps` Adam steps at lr 0.1, norm
    weight 0.1); then

        impair: one epoch of CE over {(N_c, c) repeated `noise_copies` times} ∪ D_r^sub  (Adam, lr_impair)
        repair: one epoch of CE over D_r^sub                                            (Adam, lr_repair)

    D_r^sub: a seeded `retain_fraction` of D_r (the paper uses a small subset of the retain data,
    1,000 images per class of CIFAR-10's 5,000, hence 0.2). D_f itself is never trained on, only its
    labels are read. Defaults from the reference code: noise lr 0.1, 5×8 = 40 noise steps, norm weight
    0.1, 20 copies of a 256-sample noise batch, impair Adam 0.02, repair Adam 0.01, batch 256; small
    models need far smaller impair/repair learning rates (methods/presets.py). A class-wise method:
    on a random forget set every class is in D_f and the noise is learned for every class.
    """

    paper = ("Tarun, Chundawat, Mandal, Kankanhalli, 'Fast Yet Effective Machine Unlearning', IEEE TNNLS 2023 "
             "(UNSIR)")
    defaults = {"noise_batch": 256, "noise_steps": 40, "noise_lr": 0.1, "noise_weight": 0.1, "noise_copies": 20,
                "lr_impair": 0.02, "lr_repair": 0.01, "impair_epochs": 1, "repair_epochs": 1,
                "retain_fraction": 0.2, "batch_size": 256}

    def validate(self):
        hp = self.hparams
        if not 0.0 < hp["retain_fraction"] <= 1.0:
            raise ValueError(f"retain_fraction must be in (0, 1], got {hp['retain_fraction']!r}")
        for key in ("noise_batch", "noise_steps", "noise_copies"):
            if hp[key] < 1:
                raise ValueError(f"{key} must be >= 1, got {hp[key]!r}")
        for key in ("noise_lr", "lr_impair", "lr_repair"):
            if hp[key] <= 0:
                raise ValueError(f"{key} must be > 0, got {hp[key]!r}")

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        forget_ds, retain_ds = dataset_of(forget, "forget"), dataset_of(retain, "retain")
        classes = sorted(int(c) for c in labels_of(forget_ds).unique())
        x0 = forget_ds[0][0]
        noises, noise_labels = [], []
        for i, c in enumerate(classes):
            n = error_maximizing_noise(model, c, (hp["noise_batch"], *x0.shape), steps=hp["noise_steps"],
                                       lr=hp["noise_lr"], weight=hp["noise_weight"], seed=seed * 1009 + i)
            noises.append(n.cpu().to(x0.dtype).repeat(hp["noise_copies"], *([1] * x0.dim())))
            noise_labels.append(torch.full((len(noises[-1]),), c, dtype=torch.long))
        g = torch.Generator().manual_seed(seed)
        keep = max(1, round(hp["retain_fraction"] * len(retain_ds)))
        sub = Subset(retain_ds, torch.randperm(len(retain_ds), generator=g)[:keep].sort().values.tolist())
        impair = ConcatDataset([TensorDataset(torch.cat(noises), torch.cat(noise_labels)), sub])

        def loader(ds):
            return DataLoader(ds, batch_size=hp["batch_size"], shuffle=True,
                              generator=torch.Generator().manual_seed(seed))

        def ce(model, x, y, epoch):
            return F.cross_entropy(model(x), y)

        params = [p for p in model.parameters() if p.requires_grad]
        log = fit(model, lambda e: [("impair", loader(impair), ce)], epochs=hp["impair_epochs"],
                  optimizer=make_optimizer(params, "adam", lr=hp["lr_impair"]), progress=progress, desc="unsir impair")
        log.update(fit(model, lambda e: [("repair", loader(sub), ce)], epochs=hp["repair_epochs"],
                       optimizer=make_optimizer(params, "adam", lr=hp["lr_repair"]), progress=progress,
                       desc="unsir repair"))
        return {**log, "noise_classes": classes, "retain_subset": keep}
