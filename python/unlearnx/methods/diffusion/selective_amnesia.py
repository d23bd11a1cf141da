"""Selective Amnesia (Heng & Soh, NeurIPS 2023, "Selective Amnesia: A Continual Learning Approach to
Forgetting in Deep Generative Models").

Forgetting as continual learning (Eq. 5 of the paper, with generative replay, Eq. 6): maximize the
likelihood of a SURROGATE distribution q(x | c_f) under the forget condition, while Elastic Weight
Consolidation and generative replay of the other conditions from the frozen model keep the rest:

    L(θ) = E_{x ~ q(x|c_f)} ℓ(θ; x, c_f)  +  E_{c ~ p(c_r), x ~ p_θ*(x|c)} ℓ(θ; x, c)
           +  λ Σ_i F_i (θ_i − θ*_i)²

ℓ the denoising loss (the diffusion ELBO's L_simple, as the paper's DDPM/SD experiments),
F_i the diagonal Fisher of the frozen model, computed on its own samples for every condition
(forget and retain) as the per-batch squared gradient of ℓ (unlearnx.stats.fisher_diagonal,
mode "per_batch"); θ* the original weights. q: uniform noise images (the paper's choice for
MNIST / CIFAR-10; for SD it used images of a surrogate concept, pass ``surrogate=`` images for that).
Replay images are drawn once from the frozen model (``n_replay`` per retain condition) instead of
every step (same distribution, less sampling).

Paper: a large EWC weight λ and tens of thousands of steps (its per-dataset values were not
re-checked here). Tiny-model defaults: λ = 100, lr 1e-3 (the tiny UNets train at 1e-3), 100 steps,
batch 16, 4 replay images per retain condition, 10-step sampling for replay/Fisher. With ``lora=True`` the
penalty is on the adapter's weight change ΔW = get_delta_weight(), so θ − θ* is exact there too.
"""
from __future__ import annotations

import torch

from unlearnx._modes import training_mode
from unlearnx.diffusion import ConditionedImages, diffusion_loader, diffusion_loss, sample
from unlearnx.diffusion.adapters import TrainableUNet
from unlearnx.methods.diffusion.base import LORA_DEFAULTS, DiffusionMethod
from unlearnx.methods.diffusion.gradients import cycle_batches
from unlearnx.methods.registry import register_method
from unlearnx.stats import fisher_diagonal

__all__ = ["SelectiveAmnesia", "diffusion_fisher"]


def diffusion_fisher(model, data, *, batch_size: int = 16, seed: int = 0) -> dict:
    """Diagonal Fisher of model.unet on (image, condition) data: name (of model.unet.named_parameters())
    -> mean over batches of (∇θ mean ℓ_MSE(batch))²."""
    loader = diffusion_loader(data, batch_size=batch_size, seed=seed, shuffle=False)
    fisher = fisher_diagonal(model, loader, lambda m, b: diffusion_loss(m, b[0], b[1]), mode="per_batch",
                             params=[f"unet.{n}" for n, _ in model.unet.named_parameters()], progress=False)
    return {n[len("unet."):]: f for n, f in fisher.items()}


@register_method("selective_amnesia", task="diffusion")
class SelectiveAmnesia(DiffusionMethod):
    """Selective Amnesia (see the module docstring for the loss and the defaults)."""

    paper = "Heng & Soh, 'Selective Amnesia: A Continual Learning Approach to Forgetting in Deep Generative Models', NeurIPS 2023"
    requires = ("forget", "retain")
    defaults = {"steps": 100, "lr": 1e-3, "batch_size": 16, "ewc_lambda": 100.0, "n_replay": 4,
                "sample_steps": 10, "surrogate": None, **LORA_DEFAULTS}

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        forget_conds = self.forget_conditions(model, forget)
        retain_conds = self.retain_conditions(model, retain, forget_conds)
        if not retain_conds:
            raise ValueError("selective_amnesia needs retain data with conditions other than the forget ones")
        n = hp["n_replay"]
        # generative replay and the Fisher's samples: from the frozen model, every condition
        conds = [c for c in retain_conds for _ in range(n)]
        replay = ConditionedImages(sample(model, conds, steps=hp["sample_steps"], seed=seed).cpu(), conds)
        fconds = [c for c in forget_conds for _ in range(n)]
        fisher_data = ConditionedImages(
            torch.cat([replay.images, sample(model, fconds, steps=hp["sample_steps"], seed=seed + 1).cpu()]),
            conds + fconds)
        fisher = diffusion_fisher(model, fisher_data, batch_size=hp["batch_size"], seed=seed)
        shape = forget[0][0].shape
        if hp["surrogate"] is None:
            g = torch.Generator().manual_seed(seed)
            surrogate = torch.rand((max(len(forget), n), *shape), generator=g)
        else:
            surrogate = torch.as_tensor(hp["surrogate"], dtype=torch.float32)
            if surrogate.dim() != 4 or tuple(surrogate.shape[1:]) != tuple(shape):
                raise ValueError(f"surrogate must be images [N, {', '.join(map(str, shape))}], got {tuple(surrogate.shape)}")
        sur_conds = [forget_conds[i % len(forget_conds)] for i in range(surrogate.shape[0])]
        sur = ConditionedImages(surrogate, sur_conds)
        tr = TrainableUNet(model, "all", lora=hp["lora"], rank=hp["lora_rank"])
        penalty = _ewc_penalty(tr, fisher)
        opt = torch.optim.Adam(tr.params, lr=hp["lr"])
        s_iter = cycle_batches(sur, batch_size=hp["batch_size"], seed=seed)
        r_iter = cycle_batches(replay, batch_size=hp["batch_size"], seed=seed + 1)
        log = {"surrogate_loss": [], "replay_loss": [], "ewc": []}
        try:
            with training_mode(model.unet, True):
                for step in range(hp["steps"]):
                    xs, cs = next(s_iter)
                    xr, cr = next(r_iter)
                    ls = diffusion_loss(model, xs.to(model.device), cs).mean()
                    lr_ = diffusion_loss(model, xr.to(model.device), cr).mean()
                    ewc = penalty()
                    loss = ls + lr_ + hp["ewc_lambda"] * ewc
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    log["surrogate_loss"].append(ls.item())
                    log["replay_loss"].append(lr_.item())
                    log["ewc"].append(ewc.item())
                    if progress and (step + 1) % 25 == 0:
                        print(f"selective_amnesia step {step + 1} surrogate {ls:.4f} replay {lr_:.4f} ewc {ewc:.3e}",
                              flush=True)
        finally:
            info = tr.finish()
        return {**log, **info}


def _ewc_penalty(tr: TrainableUNet, fisher: dict):
    """Σ_i F_i (θ_i − θ*_i)² over the trained weights: the weights' change (full fine-tuning) or the
    LoRA layers' delta weights."""
    unet = tr.model.unet
    if tr.lora:
        layers = [(n, m) for n, m in unet.named_modules() if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer")]
        terms = [(fisher[f"{n}.weight"], m) for n, m in layers if f"{n}.weight" in fisher]

        def penalty():
            return sum((f * m.get_delta_weight("unlearnx").float().pow(2)).sum() for f, m in terms)
        return penalty
    params = dict(unet.named_parameters())
    ref = {n: params[n].detach().clone() for n in fisher if params[n].requires_grad}

    def penalty():
        return sum((fisher[n] * (params[n].float() - ref[n].float()).pow(2)).sum() for n in ref)
    return penalty
