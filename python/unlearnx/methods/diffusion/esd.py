"""ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023).

Fine-tune ε_θ so that, under the erased concept c, it predicts the frozen model's noise guided
AWAY from c (negative classifier-free guidance), Eq. 2/3 of the paper:

    ε_θ(x_t, c, t)  ←  ε_θ*(x_t, t) − η [ε_θ*(x_t, c, t) − ε_θ*(x_t, t)]
    L = ‖ ε_θ(x_t, c, t) − (ε_θ*(x_t, ∅, t) − η (ε_θ*(x_t, c, t) − ε_θ*(x_t, ∅, t))) ‖²

x_t comes from the model itself: DDIM sampling under c (guidance `start_guidance`) from noise for a
random number k ∈ [0, ddim_steps) of steps, t = the DDIM timestep reached (the paper's code samples
with the model being trained, under no gradient). ESD-x trains the cross-attention projections
(attn2: for styles and specific concepts), ESD-u the non-cross-attention weights (global concepts;
time embedding, class embedding and output layer excluded, as in the paper's code).

Paper (SD 1.4): lr 1e-5 Adam, 1000 iterations, batch 1, η 1.0, start guidance 3, 50 DDIM steps.
Tiny-model defaults here: lr 1e-4 (full) — the tiny UNets are trained at lr 1e-3 so 1e-5 would
not move them in a few hundred steps — 150 iterations, batch 8 x_t per iteration, 20 DDIM steps;
η and the start guidance are the paper's. With lora=True the frozen teacher θ* is the same UNet
with the adapter disabled (no copy); with full fine-tuning a frozen copy of the UNet is kept for
the run (one extra UNet in memory).
"""
from __future__ import annotations

import torch

from unlearnx._modes import training_mode
from unlearnx.diffusion import ddim_partial_sample, denoise_mse
from unlearnx.diffusion.adapters import TrainableUNet
from unlearnx.methods.diffusion.base import LORA_DEFAULTS, DiffusionMethod
from unlearnx.methods.registry import register_method

__all__ = ["ESDx", "ESDu", "esd_target"]

_PAPER = "Gandikota et al., 'Erasing Concepts from Diffusion Models', ICCV 2023"


def esd_target(eps_null: torch.Tensor, eps_c: torch.Tensor, eta: float) -> torch.Tensor:
    """ESD's regression target ε_θ*(x_t, ∅) − η (ε_θ*(x_t, c) − ε_θ*(x_t, ∅))."""
    return eps_null - eta * (eps_c - eps_null)


class _ESD(DiffusionMethod):
    part = "xattn"
    paper = _PAPER
    defaults = {"iterations": 150, "lr": 1e-4, "batch_size": 8, "negative_guidance": 1.0, "start_guidance": 3.0,
                "ddim_steps": 20, **LORA_DEFAULTS}
    requires = ("forget",)

    def validate(self):
        if self.hparams["ddim_steps"] < 1 or self.hparams["iterations"] < 1:
            raise ValueError("ddim_steps and iterations must be >= 1")

    def run(self, model, *, forget, retain, seed, progress):
        self.check_model_kind(model)
        hp = self.hparams
        concepts = self.forget_conditions(model, forget)
        tr = TrainableUNet(model, self.part, lora=hp["lora"], rank=hp["lora_rank"], teacher=True)
        opt = torch.optim.Adam(tr.params, lr=hp["lr"])
        gen = torch.Generator().manual_seed(seed)
        B = hp["batch_size"]
        losses = []
        try:
            with training_mode(model.unet, True):
                for it in range(hp["iterations"]):
                    idx = torch.randint(len(concepts), (B,), generator=gen).tolist()
                    conds = [concepts[i] for i in idx]
                    emb_c = model.encode(conds)
                    emb_0 = model.encode(model.null_conditions(B))
                    stop = int(torch.randint(hp["ddim_steps"], (1,), generator=gen))
                    with training_mode(model.unet, False):
                        x_t, t = ddim_partial_sample(model, emb_c, emb_0, steps=hp["ddim_steps"], stop=stop,
                                                     guidance_scale=hp["start_guidance"], generator=gen)
                    tt = torch.full((B,), t, device=x_t.device, dtype=torch.long)
                    target = esd_target(tr.teacher_noise(x_t, tt, emb_0), tr.teacher_noise(x_t, tt, emb_c),
                                        hp["negative_guidance"])
                    loss = denoise_mse(model, model.predict_noise(x_t, tt, emb_c), target, tt)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())
                    if progress and (it + 1) % 25 == 0:
                        print(f"{self.name} it {it + 1}/{hp['iterations']} loss {loss:.4f}", flush=True)
        finally:
            info = tr.finish()
        return {"loss": losses, "concepts": concepts, **info}


@register_method("esd_x", task="diffusion")
class ESDx(_ESD):
    """ESD-x: ESD training the cross-attention projections only (see the module docstring)."""

    part = "xattn"
    model_kinds = ("text",)
    kind_reason = "it trains the cross-attention projections; ESD-u trains the rest"


@register_method("esd_u", task="diffusion")
class ESDu(_ESD):
    """ESD-u: ESD training every UNet weight except cross-attention, time/class embedding and the
    output layer (see the module docstring)."""

    part = "noxattn"
