"""Worst-case forget set: the m training points that unlearning removes least.

Fan, Liu, Hero, Liu, "Challenging Forgets: Unveiling the Worst-Case Forget Sets in Machine
Unlearning", ECCV 2024.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import trange

from unlearnx._modes import training_mode
from unlearnx.data.datasets import check_dataset, inputs_of, labels_of
from unlearnx.methods.training import model_device, seeded
from unlearnx.ops import project_capped_simplex

__all__ = ["worst_case_forget_indices"]


def _per_sample_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = model_device(model)
    with training_mode(model):
        with torch.no_grad():
            return torch.cat([F.cross_entropy(model(x[i:i + batch_size].to(device)), y[i:i + batch_size].to(device),
                                              reduction="none").float().cpu()
                              for i in range(0, len(x), batch_size)])


def worst_case_forget_indices(
    model: nn.Module,
    data,
    m: int,
    *,
    outer_steps: int = 5,
    inner_epochs: int = 1,
    w_lr: float = 0.01,
    theta_lr: float = 0.01,
    gamma: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bi-level search for the m points of `data` that stay best fitted after unlearning them.

    Upper level: sample weights w ∈ [0, 1]^N, Σw = m, minimising Σ_i w_i ℓ_i(θ*(w)) + γ‖w‖²; lower
    level: θ*(w) = the unlearned model, fine-tuning the trained `model` (θ_o) on the (1 − w)-weighted
    loss mean_batch((1 − w_i)·CE_i) by sign-SGD (θ ← θ − θ_lr·sign(∇)), train mode. Simplified for
    small models, as `outer_steps` alternations: each restarts the lower level at θ_o and runs
    `inner_epochs` epochs (seeded shuffling), computes the per-sample losses ℓ_i at θ*(w) (eval
    mode), then takes one projected upper step w ← Proj_{capped simplex, m}(w − η(ℓ + 2γw))
    (unlearnx.ops.project_capped_simplex), η = `w_lr`; w starts uniform at m/N. Finally the m largest
    w are kept (ties: lower index first). The paper's implicit-gradient term through θ*(w) is
    dropped (ℓ at θ*(w) is its first-order part), as in its first-order variant.

    Defaults: w_lr 0.01, θ_lr 0.01 (the paper's); γ 0.01, 5 outer steps of 1 epoch (small-model
    choices). `model` is not modified. Reads all of `data` into memory (inputs_of / labels_of).
    Returns (sorted int64 indices [m] into `data`, the final weights w [N] fp64).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_dataset(data, "data")
    n = len(data)
    if isinstance(m, bool) or not isinstance(m, int) or not 0 < m < n:
        raise ValueError(f"m must be an integer in [1, {n - 1}] (len(data) = {n}), got {m!r}")
    for key, value in (("outer_steps", outer_steps), ("inner_epochs", inner_epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    for key, value in (("w_lr", w_lr), ("theta_lr", theta_lr), ("gamma", gamma)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
    x, y = inputs_of(data), labels_of(data)
    device = model_device(model)
    w = torch.full((n,), m / n, dtype=torch.float64)
    loader = DataLoader(TensorDataset(x, y, torch.arange(n)), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    with seeded(seed, device):
        for _ in trange(outer_steps, desc="worst-case forget set", disable=not progress, leave=False):
            theta = copy.deepcopy(model).train()
            params = [p for p in theta.parameters() if p.requires_grad]
            for _ in range(inner_epochs):
                for xb, yb, ib in loader:
                    xb, yb = xb.to(device), yb.to(device)
                    weight = (1.0 - w[ib]).to(device=device, dtype=torch.float32)
                    loss = (weight * F.cross_entropy(theta(xb), yb, reduction="none")).mean()
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                    with torch.no_grad():
                        for p, g in zip(params, grads):
                            if g is not None:
                                p.sub_(theta_lr * g.sign())
            losses = _per_sample_losses(theta, x, y, 256).double()
            if not bool(torch.isfinite(losses).all()):
                raise FloatingPointError("the lower-level unlearning diverged (non-finite loss); lower theta_lr")
            w = project_capped_simplex(w - w_lr * (losses + 2.0 * gamma * w), float(m))
    order = torch.sort(-w, stable=True).indices[:m]
    return order.sort().values, w
