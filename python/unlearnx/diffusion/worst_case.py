"""Worst-case forget sets for a conditional diffusion model: which conditions (classes / prompts)
are hardest to unlearn.

Fan, Liu, Hero, Liu, "Challenging Forgets: Unveiling the Worst-Case Forget Sets in Machine
Unlearning", ECCV 2024 — its generative experiments select classes of a class-conditional
diffusion model. The classifier version is unlearnx.methods.worst_case.worst_case_forget_indices;
this one puts the weights on conditions instead of samples.
"""
from __future__ import annotations

import copy
import math

import torch

from unlearnx._modes import training_mode
from unlearnx.diffusion.model import DiffusionModel
from unlearnx.diffusion.training import diffusion_loss
from unlearnx.ops import project_capped_simplex

__all__ = ["worst_case_forget_conditions"]


def _pos(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def worst_case_forget_conditions(model: DiffusionModel, images: torch.Tensor, conditions, m: int, *,
                                 outer_steps: int = 5, inner_steps: int = 10, w_lr: float = 0.01,
                                 theta_lr: float = 1e-3, gamma: float = 0.01, batch_size: int = 16,
                                 eval_repeats: int = 2, seed: int = 0) -> tuple[list, torch.Tensor]:
    """Bi-level selection of the m conditions (of the distinct `conditions` of the data) that stay best
    generated after unlearning them.

    Upper level: condition weights w ∈ [0, 1]^C, Σw = m, minimising Σ_c w_c ℓ_c(θ*(w)) + γ‖w‖², with
    ℓ_c the mean L_simple denoising loss of condition c's images at θ*(w) (fixed t, ε; low = the
    model still generates c). Lower level θ*(w): the unlearning, restarted at θ_o each outer step:
    `inner_steps` Adam steps (lr `theta_lr`) on the (1 − w_c)-weighted L_simple loss of the data
    (fine-tuning on what is kept, the paper's lower level). Upper step: w ← Proj(w − η(ℓ + 2γw))
    with unlearnx.ops.project_capped_simplex (η = `w_lr`); w starts at m/C. The implicit gradient
    through θ*(w) is dropped (first-order variant, as in the classifier version). `model` is not
    modified. Returns (the m selected conditions, in data order; final weights w [C] fp64).
    """
    if not isinstance(model, DiffusionModel):
        raise TypeError(f"model must be an unlearnx.diffusion.DiffusionModel, got {type(model).__name__}")
    conditions = model.check_conditions(conditions)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) != len(conditions):
        raise ValueError("images must be a tensor [N, C, H, W] with one condition each")
    distinct = []
    for c in conditions:
        if c not in distinct:
            distinct.append(c)
    C = len(distinct)
    if isinstance(m, bool) or not isinstance(m, int) or not 0 < m < C:
        raise ValueError(f"m must be an integer in [1, {C - 1}] ({C} distinct conditions), got {m!r}")
    for key, value in (("outer_steps", outer_steps), ("inner_steps", inner_steps), ("batch_size", batch_size),
                       ("eval_repeats", eval_repeats)):
        _pos(value, key)
    for key, value in (("w_lr", w_lr), ("theta_lr", theta_lr), ("gamma", gamma)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
    cid = torch.tensor([distinct.index(c) for c in conditions])
    gen = torch.Generator().manual_seed(seed)
    x_eval = images.repeat(eval_repeats, 1, 1, 1)
    c_eval = conditions * eval_repeats
    t_eval = torch.randint(0, model.num_train_timesteps, (len(x_eval),), generator=gen)
    n_eval = torch.randn((len(x_eval), *model.latent_shape), generator=gen)
    w = torch.full((C,), m / C, dtype=torch.float64)
    for _ in range(outer_steps):
        theta = copy.deepcopy(model)
        params = [p for p in theta.unet.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=theta_lr)
        with training_mode(theta.unet, True):
            for _ in range(inner_steps):
                idx = torch.randint(len(images), (min(batch_size, len(images)),), generator=gen)
                weight = (1.0 - w[cid[idx]]).float().to(theta.device)
                loss = (weight * diffusion_loss(theta, images[idx].to(theta.device),
                                                [conditions[i] for i in idx.tolist()])).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with training_mode(theta.unet, False), torch.no_grad():
            per = torch.cat([diffusion_loss(theta, x_eval[i:i + 64].to(theta.device), c_eval[i:i + 64],
                                            t=t_eval[i:i + 64].to(theta.device), noise=n_eval[i:i + 64].to(theta.device))
                             for i in range(0, len(x_eval), 64)]).double().cpu()
        if not bool(torch.isfinite(per).all()):
            raise FloatingPointError("the lower-level unlearning diverged (non-finite loss); lower theta_lr")
        ell = torch.zeros(C, dtype=torch.float64).index_add_(0, cid.repeat(eval_repeats), per)
        ell /= torch.bincount(cid.repeat(eval_repeats), minlength=C).double()
        w = project_capped_simplex(w - w_lr * (ell + 2.0 * gamma * w), float(m))
        del theta
    chosen = sorted(torch.sort(-w, stable=True).indices[:m].tolist())
    return [distinct[i] for i in chosen], w

