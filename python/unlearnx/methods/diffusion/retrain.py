"""Retrain (oracle) for diffusion models: re-initialize the UNet and train it on the retain data only."""
from __future__ import annotations

import torch

from unlearnx.diffusion import train_diffusion
from unlearnx.methods.diffusion.base import DiffusionMethod
from unlearnx.methods.registry import register_method

__all__ = ["RetrainDiffusion", "reinitialize_unet"]


@torch.no_grad()
def reinitialize_unet(model, seed: int) -> None:
    """Fresh random UNet weights of the same config (diffusers' own initialisation), seeded."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        fresh = type(model.unet).from_config(model.unet.config)
    model.unet.load_state_dict(fresh.state_dict())


@register_method("retrain", task="diffusion")
class RetrainDiffusion(DiffusionMethod):
    """The exact-unlearning oracle: UNet re-initialized (seeded), then `train_diffusion` on D_r
    only. Text encoder and VAE are kept (frozen, never trained on D_f by unlearnx).

    The defaults are `train_diffusion`'s; pass the original model's training recipe so that
    Retrain differs from it only by the missing forget data.
    """

    paper = "Exact retraining without the forget set (the oracle of every unlearning benchmark)"
    requires = ("retain",)
    defaults = {"steps": 1500, "lr": 1e-3, "batch_size": 64, "cond_drop": 0.1, "warmup": 50, "weight_decay": 0.0}

    def run(self, model, *, forget, retain, seed, progress):
        reinitialize_unet(model, seed)
        hp = self.hparams
        return train_diffusion(model, retain, steps=hp["steps"], lr=hp["lr"], batch_size=hp["batch_size"],
                               cond_drop=hp["cond_drop"], warmup=hp["warmup"], weight_decay=hp["weight_decay"],
                               seed=seed, progress=progress)
