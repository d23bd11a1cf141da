"""SalUn for diffusion models (Fan et al., ICLR 2024, Sec. 4 "SalUn for image generation", Eq. 8).

Saliency mask m = 1(|∇_θ ℓ_MSE(θ_o; D_f)| ≥ γ), γ the global median (top r = 50% of all UNet
weights by the forget diffusion-loss gradient magnitude; unlearnx.stats.grad_saliency +
unlearnx.methods.masking.global_topk_masks), θ_u = m ⊙ (θ_o + Δθ) + (1 − m) ⊙ θ_o held exactly by
`MaskedOptimizer`. Loss (Eq. 8, random labelling of the forget condition):

    L = E_{(x, c) ∈ D_f, t, ε, c' ≠ c} ‖ ε_θu(x_t | c') − ε_θu(x_t | c) ‖²  +  β ℓ_MSE(θ_u; D_r)

c' is drawn uniformly from the retain conditions (other classes / prompts). The relabelled
prediction ε_θu(x_t | c') is the regression target (stop-gradient): the forget condition is
remapped onto other concepts rather than both predictions collapsing onto each other.

Paper (class-wise DDPM on CIFAR-10): β 1, mask ratio 0.5, Adam lr 1e-4, 1000 steps, batch 128.
Tiny-model defaults here: lr 1e-3 (the tiny UNets are trained at 1e-3), 150 steps, batch 16 forget
+ 16 retain (`retain_batch_size` sets the retain batch apart: a step costs a differentiable pass over
batch_size + retain_batch_size images and a gradient-free one over batch_size, so where a step is
compute-bound a smaller retain batch buys more steps in the same time; the tiny CPU benchmark models
are bound by per-operator overhead instead, docs/benchmarks.md). LoRA is not offered: the mask is
over the base weights, which a low-rank adapter update cannot respect coordinate-wise.
"""
from __future__ import annotations

import itertools

import torch

from unlearnx._modes import training_mode
from unlearnx.diffusion import denoise_mse, diffusion_loader, diffusion_loss, noisy_latents
from unlearnx.diffusion.adapters import TrainableUNet
from unlearnx.methods.diffusion.base import DiffusionMethod
from unlearnx.methods.masking import MaskedOptimizer, global_topk_masks, masks_by_param
from unlearnx.methods.registry import register_method
from unlearnx.stats import grad_saliency

__all__ = ["SalUnDiffusion", "diffusion_saliency_masks", "salun_losses"]


def diffusion_saliency_masks(model, forget, *, mask_ratio: float = 0.5, batch_size: int = 16, seed: int = 0):
    """SalUn's mask over the UNet: top `mask_ratio` of |Σ_batches ∇θ mean ℓ_MSE(θ_o; D_f batch)|,
    ranked globally over every UNet parameter. Returns name (of model.named_parameters()) -> bool."""
    loader = diffusion_loader(forget, batch_size=batch_size, seed=seed, shuffle=False)
    sal = grad_saliency(model, loader, lambda m, b: diffusion_loss(m, b[0], b[1]),
                        params=[f"unet.{n}" for n, _ in model.unet.named_parameters()], progress=False)
    return global_topk_masks(sal, mask_ratio)


def salun_losses(model, xf, cf, relabel, xr, cr) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8's two terms on one forget batch (xf, cf; relabelled conditions c' = `relabel`) and one
    retain batch (xr, cr): (‖ε_θ(x_t | c') − ε_θ(x_t | c)‖² in the model's output space, with the
    relabelled prediction as a stop-gradient target; the retain batch's ℓ_MSE), each a scalar mean.

    Both batches go through the UNet in one forward pass (the conditioning of a sample does not
    depend on the others': fixed-length prompts, per-sample normalisation), so a step costs one
    differentiable forward and one backward instead of two; t and ε are drawn forget batch first,
    in the order of two separate passes."""
    x0f = model.to_latents(xf.to(model.device))
    x_tf, tf, _ = noisy_latents(model, x0f)
    x0r = model.to_latents(xr.to(model.device))
    x_tr, tr, noise_r = noisy_latents(model, x0r)
    with torch.no_grad():
        target = model.predict_noise(x_tf, tf, model.encode(relabel))
    n = len(x0f)
    out = model.model_output(torch.cat([x_tf, x_tr]), torch.cat([tf, tr]),
                             model.encode(model.check_conditions(cf) + model.check_conditions(cr)))
    lf = denoise_mse(model, model.noise_from_output(out[:n], x_tf, tf), target, tf)
    lr = (out[n:].float() - model.training_target(x0r, noise_r, tr).float()).pow(2).flatten(1).mean(1).mean()
    return lf, lr


@register_method("salun", task="diffusion")
class SalUnDiffusion(DiffusionMethod):
    """SalUn for diffusion models (see the module docstring for the equation and defaults)."""

    paper = "Fan et al., 'SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency', ICLR 2024"
    requires = ("forget", "retain")
    defaults = {"steps": 150, "lr": 1e-3, "batch_size": 16, "retain_batch_size": None, "beta": 1.0,
                "mask_ratio": 0.5}

    def validate(self):
        if not 0.0 < self.hparams["mask_ratio"] <= 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1], got {self.hparams['mask_ratio']!r}")
        rb = self.hparams["retain_batch_size"]
        if rb is not None and (isinstance(rb, bool) or not isinstance(rb, int) or rb < 1):
            raise ValueError(f"retain_batch_size must be a positive integer or None (= batch_size), got {rb!r}")

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        forget_conds = self.forget_conditions(model, forget)
        others = self.retain_conditions(model, retain, forget_conds)
        if not others:
            raise ValueError("salun needs retain data with conditions other than the forget ones (for c' ≠ c)")
        masks = diffusion_saliency_masks(model, forget, mask_ratio=hp["mask_ratio"], batch_size=hp["batch_size"],
                                         seed=seed)
        tr = TrainableUNet(model, "all")
        opt = MaskedOptimizer(torch.optim.Adam(tr.params, lr=hp["lr"]), masks_by_param(model, masks))
        f_iter = itertools.cycle(diffusion_loader(forget, batch_size=hp["batch_size"], seed=seed))
        r_batch = hp["retain_batch_size"] or hp["batch_size"]
        r_iter = itertools.cycle(diffusion_loader(retain, batch_size=r_batch, seed=seed + 1))
        gen = torch.Generator().manual_seed(seed)
        log = {"forget_loss": [], "retain_loss": []}
        try:
            with training_mode(model.unet, True):
                for step in range(hp["steps"]):
                    xf, cf = next(f_iter)
                    xr, cr = next(r_iter)
                    relabel = [others[i] for i in torch.randint(len(others), (len(cf),), generator=gen).tolist()]
                    lf, lr_ = salun_losses(model, xf, cf, relabel, xr, cr)
                    loss = lf + hp["beta"] * lr_
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    log["forget_loss"].append(lf.item())
                    log["retain_loss"].append(lr_.item())
                    if progress and (step + 1) % 25 == 0:
                        print(f"salun step {step + 1}/{hp['steps']} forget {lf:.4f} retain {lr_:.4f}", flush=True)
        finally:
            info = tr.finish()
        total = sum(m.numel() for m in masks.values())
        return {**log, **info, "mask_fraction": sum(int(m.sum()) for m in masks.values()) / total}
