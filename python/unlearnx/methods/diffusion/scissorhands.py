"""Scissorhands (Wu & Harandi, ECCV 2024, "Scissorhands: Scrub Data Influence via Connection
Sensitivity in Networks"), for diffusion models.

1. Trimming (Sec. 3.1): SNIP connection sensitivity of every weight on the forget data, with the
   connection mask c at 1 (Lee et al. 2019, Eq. 3):
       s_j = | ∂L(c ⊙ θ; D_f) / ∂c_j | = | θ_j · ∂L(θ; D_f) / ∂θ_j |,
   L the denoising loss ℓ_MSE over D_f (gradients summed over forget batches). The top
   k = floor(ratio · N) connections over the whole UNet (global ranking, unlearnx.methods.masking.
   global_topk_masks → unlearnx.ops.topk_masks, exact count) are re-initialized: replaced by draws
   from N(0, σ_W²), σ_W the standard deviation of the weight tensor they belong to (the paper
   re-initializes them; its initializer is the network's, whose scale σ_W stands in for here).
2. Repair (Sec. 3.2): minimize the retain denoising loss with gradient projection so that the repair
   does not relearn D_f: with g_r = ∇ℓ_MSE(D_r) and g_f = ∇ℓ_MSE(D_f), when g_r·(−g_f) < 0 (a retain
   step would also lower the forget loss) the update is g_r − (g_r·g_f / ‖g_f‖²) g_f (the component
   along g_f removed), else g_r.

Paper: ratio 0.1 (classification) / a few % of the UNet (SD), repair with Adam a few epochs.
Tiny-model defaults: ratio 0.01 (5% wrecked the tiny UNet beyond 100 repair steps), 100 repair steps, Adam lr 1e-3 (the tiny UNets train at 1e-3),
batch 16. Repair trains the full UNet or a LoRA adapter on it (trimming always edits the weights).
"""
from __future__ import annotations

import torch

from unlearnx._modes import training_mode
from unlearnx.diffusion import diffusion_loader, diffusion_loss
from unlearnx.diffusion.adapters import TrainableUNet
from unlearnx.methods.diffusion.base import LORA_DEFAULTS, DiffusionMethod
from unlearnx.methods.diffusion.gradients import assign_flat_grad, cycle_batches, flat_grad, project_conflicting
from unlearnx.methods.masking import global_topk_masks
from unlearnx.methods.registry import register_method

__all__ = ["Scissorhands", "snip_sensitivity", "trim_connections_"]


def snip_sensitivity(model, data, *, batch_size: int = 16, seed: int = 0) -> dict:
    """name (of model.unet.named_parameters()) -> |θ ⊙ Σ_batches ∇θ mean ℓ_MSE(θ; batch)| over `data`."""
    names, params = zip(*[(n, p) for n, p in model.unet.named_parameters()])
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    with training_mode(model.unet, False):
        for images, conds in diffusion_loader(data, batch_size=batch_size, seed=seed, shuffle=False):
            loss = diffusion_loss(model, images.to(model.device), conds).mean()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for a, g in zip(acc, grads):
                if g is not None:
                    a.add_(g.float())
    return {n: (a * p.detach().float()).abs() for n, a, p in zip(names, acc, params)}


@torch.no_grad()
def trim_connections_(model, masks: dict, generator: torch.Generator | None = None) -> int:
    """Re-initializes the masked weights of model.unet in place (N(0, σ_W²) per tensor); returns the count."""
    params = dict(model.unet.named_parameters())
    n = 0
    for name, m in masks.items():
        p = params[name]
        k = int(m.sum())
        if k == 0:
            continue
        std = float(p.float().std()) if p.numel() > 1 else 0.0
        draws = torch.randn(k, generator=generator).to(p.device, p.dtype) * std
        p[m] = draws
        n += k
    return n


@register_method("scissorhands", task="diffusion")
class Scissorhands(DiffusionMethod):
    """Scissorhands (see the module docstring: SNIP trimming, then projected repair)."""

    paper = "Wu & Harandi, 'Scissorhands: Scrub Data Influence via Connection Sensitivity in Networks', ECCV 2024"
    requires = ("forget", "retain")
    defaults = {"ratio": 0.01, "steps": 100, "lr": 1e-3, "batch_size": 16, **LORA_DEFAULTS}

    def validate(self):
        if not 0.0 < self.hparams["ratio"] < 1.0:
            raise ValueError(f"ratio must be in (0, 1), got {self.hparams['ratio']!r}")

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        self.forget_conditions(model, forget)
        scores = snip_sensitivity(model, forget, batch_size=hp["batch_size"], seed=seed)
        masks = global_topk_masks(scores, hp["ratio"])
        trimmed = trim_connections_(model, masks, torch.Generator().manual_seed(seed))
        tr = TrainableUNet(model, "all", lora=hp["lora"], rank=hp["lora_rank"])
        params = tr.params
        opt = torch.optim.Adam(params, lr=hp["lr"])
        f_iter = cycle_batches(forget, batch_size=hp["batch_size"], seed=seed)
        r_iter = cycle_batches(retain, batch_size=hp["batch_size"], seed=seed + 1)
        log = {"retain_loss": [], "forget_loss": [], "projected": 0}
        try:
            with training_mode(model.unet, True):
                for step in range(hp["steps"]):
                    xf, cf = next(f_iter)
                    xr, cr = next(r_iter)
                    lr_ = diffusion_loss(model, xr.to(model.device), cr).mean()
                    lf = diffusion_loss(model, xf.to(model.device), cf).mean()
                    g_r, g_f = flat_grad(lr_, params), flat_grad(lf, params)
                    g, hit = project_conflicting(g_r, -g_f)
                    assign_flat_grad(params, g)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    log["retain_loss"].append(lr_.item())
                    log["forget_loss"].append(lf.item())
                    log["projected"] += int(hit)
                    if progress and (step + 1) % 25 == 0:
                        print(f"scissorhands repair {step + 1} retain {lr_:.4f} forget {lf:.4f}", flush=True)
        finally:
            info = tr.finish()
        return {**log, **info, "trimmed": trimmed, "trimmed_fraction": trimmed / sum(s.numel() for s in scores.values())}
