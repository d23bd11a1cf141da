"""DoCo (Wu et al., AAAI 2025, "Unlearning Concepts in Diffusion Model via Concept Domain Correction
and Concept Preserving Gradient").

Concept domain correction (adversarial, Sec. 3.2): a discriminator D separates the frozen model's
outputs under the ANCHOR concept c_a from the trained model's outputs under the TARGET concept c*,
both from the same noisy latent x_t; the model is trained to fool it, aligning the target's output
domain with the anchor's:
    L_D = −log D(o*(x_t, c_a)) − log(1 − D(o_θ(x_t, c*)))          (discriminator)
    L_u = −log D(o_θ(x_t, c*))                                     (unlearning, non-saturating)
o the predicted clean latent x̂_0 = (x_t − sqrt(1 − ᾱ_t) ε̂) / sqrt(ᾱ_t) of each model (the denoised
output the domains are compared on). Concept-preserving gradient (Sec. 3.3, gradient surgery): with
g_u = ∇L_u and g_r = ∇ of the retain (relearning) denoising loss,
    ĝ_u = g_u − (g_u·g_r / ‖g_r‖²) g_r   if g_u·g_r < 0,  else g_u,
and the step follows ĝ_u + λ_r g_r (λ_r = 1).
Anchor: as Concept Ablation (`concept_anchors`: the prompt without the concept's words, or the
first retain class). x_t: forget images noised. Paper (SD 1.4): fine-tunes the UNet against a small
discriminator for a few thousand steps (its exact lr / architecture were not re-checked here).
Tiny-model defaults: lr 1e-4 UNet / 1e-3 discriminator, 100 steps, batch 8; part "xattn" for text models, "all" for class models.
"""
from __future__ import annotations

import torch
from torch import nn

from unlearnx._modes import training_mode
from unlearnx.diffusion import diffusion_loss, noisy_latents
from unlearnx.diffusion.adapters import TrainableUNet
from unlearnx.methods.diffusion.base import LORA_DEFAULTS, DiffusionMethod
from unlearnx.methods.diffusion.concept_ablation import concept_anchors
from unlearnx.methods.diffusion.gradients import (assign_flat_grad, cycle_batches, flat_grad, predicted_x0,
                                                  project_conflicting)
from unlearnx.methods.registry import register_method

__all__ = ["DoCo", "domain_discriminator"]


def domain_discriminator(channels: int, width: int = 32) -> nn.Module:
    """A small conv discriminator on [B, C, H, W] latents -> logits [B]."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 1), nn.Flatten(0))


@register_method("doco", task="diffusion")
class DoCo(DiffusionMethod):
    """DoCo (see the module docstring: adversarial domain correction + concept-preserving gradient)."""

    paper = ("Wu et al., 'Unlearning Concepts in Diffusion Model via Concept Domain Correction and Concept "
             "Preserving Gradient', AAAI 2025")
    requires = ("forget", "retain")
    defaults = {"steps": 100, "lr": 1e-4, "disc_lr": 1e-3, "batch_size": 8, "retain_weight": 1.0, "anchor": None,
                "part": None, **LORA_DEFAULTS}

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        targets = self.forget_conditions(model, forget)
        anchors = dict(zip(targets, concept_anchors(model, targets, self.retain_conditions(model, retain, targets),
                                                    hp["anchor"])))
        part = hp["part"] or ("xattn" if model.kind == "text" else "all")
        tr = TrainableUNet(model, part, lora=hp["lora"], rank=hp["lora_rank"], teacher=True)
        params = tr.params
        disc = domain_discriminator(model.latent_shape[0]).to(model.device)
        opt = torch.optim.Adam(params, lr=hp["lr"])
        opt_d = torch.optim.Adam(disc.parameters(), lr=hp["disc_lr"], betas=(0.5, 0.999))
        bce = nn.functional.binary_cross_entropy_with_logits
        f_iter = cycle_batches(forget, batch_size=hp["batch_size"], seed=seed)
        r_iter = cycle_batches(retain, batch_size=hp["batch_size"], seed=seed + 1)
        log = {"disc_loss": [], "unlearn_loss": [], "retain_loss": [], "conflicts": 0}
        try:
            with training_mode(model.unet, True):
                for step in range(hp["steps"]):
                    xf, cf = next(f_iter)
                    xr, cr = next(r_iter)
                    x_t, t, _ = noisy_latents(model, model.to_latents(xf))
                    real = predicted_x0(model, x_t, t, tr.teacher_noise(x_t, t, model.encode([anchors[c] for c in cf])))
                    fake = predicted_x0(model, x_t, t, model.predict_noise(x_t, t, model.encode(cf)))
                    ones, zeros = torch.ones(len(cf), device=x_t.device), torch.zeros(len(cf), device=x_t.device)
                    ld = bce(disc(real), ones) + bce(disc(fake.detach()), zeros)
                    opt_d.zero_grad(set_to_none=True)
                    ld.backward()
                    opt_d.step()
                    lu = bce(disc(fake), ones)
                    g_u = flat_grad(lu, params)
                    lr_ = diffusion_loss(model, xr.to(model.device), cr).mean()
                    g_r = flat_grad(lr_, params)
                    g_hat, hit = project_conflicting(g_u, g_r)
                    assign_flat_grad(params, g_hat + hp["retain_weight"] * g_r)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    log["disc_loss"].append(ld.item())
                    log["unlearn_loss"].append(lu.item())
                    log["retain_loss"].append(lr_.item())
                    log["conflicts"] += int(hit)
                    if progress and (step + 1) % 25 == 0:
                        print(f"doco step {step + 1} D {ld:.4f} unlearn {lu:.4f} retain {lr_:.4f}", flush=True)
        finally:
            info = tr.finish()
        return {**log, **info, "anchors": sorted(set(map(str, anchors.values())))}
