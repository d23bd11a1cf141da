"""EraseDiff (Wu, Le, Hayat & Harandi 2024, "EraseDiff: Erasing Data Influence in Diffusion Models").

Bi-level problem (Sec. 3): keep the retain denoising loss minimal among the models that have
forgotten D_f, where forgetting means that on forget images the model predicts a DIFFERENT noise
ε_f (drawn from U[0, 1), not the Gaussian the forward process used):

    min_θ F(θ) = E_{D_r} ‖ ε − ε_θ(x_t, c, t) ‖²     s.t.  θ ∈ argmin_θ f(θ),
    f(θ) = E_{(x, c) ∈ D_f, ε ~ N(0, I), ε_f ~ U(0, 1)} ‖ ε_f − ε_θ(sqrt(ᾱ_t) x + sqrt(1 − ᾱ_t) ε, c, t) ‖²

First-order approximation of the lower level (the paper's value-function reformulation):
θ ∈ argmin f ⇔ f(θ) − f(θ^K) ≤ 0, with θ^K = K gradient steps on f from θ (step β), so each step
minimizes F(θ) + λ (f(θ) − f(θ^K)) with θ^K held fixed (no second-order terms):

    g = ∇F(θ) + λ (∇f(θ) − ∇f(θ^K))

Paper (DDPM CIFAR-10 / SD): K = 2 inner steps, λ = 0.1, Adam lr 1e-5 (SD), ~1-2 epochs over the
forget set. Tiny-model defaults: K = 1 inner SGD step β = 0.05, λ = 1 (a small model's ∇f(θ) −
∇f(θ^K) is much smaller than SD's, λ = 0.1 barely moved it), Adam lr 1e-3 (the tiny UNets
train at 1e-3), 100 steps, batch 16 forget + 16 retain. Full fine-tuning or LoRA.
"""
from __future__ import annotations

import torch

from unlearnx._modes import training_mode
from unlearnx.diffusion import denoise_mse, diffusion_loss, noisy_latents
from unlearnx.diffusion.adapters import TrainableUNet
from unlearnx.methods.diffusion.base import LORA_DEFAULTS, DiffusionMethod
from unlearnx.methods.diffusion.gradients import assign_flat_grad, cycle_batches, flat_grad
from unlearnx.methods.registry import register_method

__all__ = ["EraseDiff", "erasediff_forget_loss"]


def erasediff_forget_loss(model, images, conds, generator=None):
    """f(θ) on one batch: ‖ε_f − ε_θ(x_t, c, t)‖² with ε_f ~ U[0, 1) (the lower-level objective)."""
    x_t, t, _ = noisy_latents(model, model.to_latents(images))
    eps_f = torch.rand(x_t.shape, generator=generator).to(x_t.device)
    return denoise_mse(model, model.predict_noise(x_t, t, model.encode(conds)), eps_f, t)


@register_method("erasediff", task="diffusion")
class EraseDiff(DiffusionMethod):
    """EraseDiff (see the module docstring for the bi-level problem and its first-order update)."""

    paper = "Wu et al., 'EraseDiff: Erasing Data Influence in Diffusion Models', 2024"
    requires = ("forget", "retain")
    defaults = {"steps": 100, "lr": 1e-3, "batch_size": 16, "lam": 1.0, "inner_steps": 1, "inner_lr": 0.05,
                **LORA_DEFAULTS}

    def validate(self):
        if self.hparams["inner_steps"] < 1:
            raise ValueError(f"inner_steps must be >= 1, got {self.hparams['inner_steps']!r}")

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        self.forget_conditions(model, forget)
        tr = TrainableUNet(model, "all", lora=hp["lora"], rank=hp["lora_rank"])
        params = tr.params
        opt = torch.optim.Adam(params, lr=hp["lr"])
        f_iter = cycle_batches(forget, batch_size=hp["batch_size"], seed=seed)
        r_iter = cycle_batches(retain, batch_size=hp["batch_size"], seed=seed + 1)
        gen = torch.Generator().manual_seed(seed)
        log = {"forget_loss": [], "retain_loss": [], "forget_gap": []}
        try:
            with training_mode(model.unet, True):
                for step in range(hp["steps"]):
                    xf, cf = next(f_iter)
                    xr, cr = next(r_iter)
                    xf, xr = xf.to(model.device), xr.to(model.device)
                    # f(θ) and f(θ^K) on the same t, ε and ε_f: their difference is the lower-level gap
                    state, gstate = torch.get_rng_state(), gen.get_state()
                    lf = erasediff_forget_loss(model, xf, cf, gen)
                    g_f = flat_grad(lf, params)
                    lr_ = diffusion_loss(model, xr, cr).mean()
                    g_r = flat_grad(lr_, params)
                    # θ^K: K SGD steps on f from θ (the lower level's approximate minimizer)
                    saved = [p.detach().clone() for p in params]
                    with torch.no_grad():
                        for p, g in zip(params, _split(g_f, params)):
                            p.sub_(hp["inner_lr"] * g)
                    for _ in range(hp["inner_steps"] - 1):
                        g_k = flat_grad(erasediff_forget_loss(model, xf, cf, gen), params)
                        with torch.no_grad():
                            for p, g in zip(params, _split(g_k, params)):
                                p.sub_(hp["inner_lr"] * g)
                    after, gafter = torch.get_rng_state(), gen.get_state()
                    torch.set_rng_state(state)
                    gen.set_state(gstate)
                    g_fk = flat_grad(lf_k := erasediff_forget_loss(model, xf, cf, gen), params)
                    torch.set_rng_state(after)
                    gen.set_state(gafter)
                    with torch.no_grad():
                        for p, s in zip(params, saved):
                            p.copy_(s)
                    assign_flat_grad(params, g_r + hp["lam"] * (g_f - g_fk))
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    log["forget_loss"].append(lf.item())
                    log["retain_loss"].append(lr_.item())
                    log["forget_gap"].append(lf.item() - lf_k.item())
                    if progress and (step + 1) % 25 == 0:
                        print(f"erasediff step {step + 1} f {lf:.4f} retain {lr_:.4f}", flush=True)
        finally:
            info = tr.finish()
        return {**log, **info}


def _split(vec, params):
    out, i = [], 0
    for p in params:
        out.append(vec[i:i + p.numel()].view_as(p).to(p.dtype))
        i += p.numel()
    return out
