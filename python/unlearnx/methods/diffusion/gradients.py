"""Helpers shared by the diffusion methods that combine several losses' gradients (EraseDiff,
Scissorhands, DoCo) or cycle through data (every data-based method).

* :func:`flat_grad` / :func:`assign_flat_grad`: the gradient of a list of parameters as one vector.
* :func:`project_conflicting`: gradient surgery (Yu et al. 2020, PCGrad; DoCo's concept-preserving
  gradient): g − (g·r / ‖r‖²) r when g·r < 0, else g.
* :func:`cycle_batches`: an endless iterator of (images, conditions) batches.
"""
from __future__ import annotations

import itertools

import torch

from unlearnx.diffusion import diffusion_loader

__all__ = ["assign_flat_grad", "cycle_batches", "flat_grad", "predicted_x0", "project_conflicting"]


def flat_grad(loss: torch.Tensor, params: list, *, retain_graph: bool = False) -> torch.Tensor:
    """∇_params loss as one flat fp32 vector (zeros for parameters the loss does not reach)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float() for g, p in zip(grads, params)])


def assign_flat_grad(params: list, vec: torch.Tensor) -> None:
    """Writes the flat vector `vec` into ``p.grad`` of `params` (in order)."""
    if vec.numel() != sum(p.numel() for p in params):
        raise ValueError(f"vec has {vec.numel()} entries but params have {sum(p.numel() for p in params)}")
    i = 0
    for p in params:
        n = p.numel()
        p.grad = vec[i:i + n].view_as(p).to(p.dtype).clone()
        i += n


def project_conflicting(g: torch.Tensor, r: torch.Tensor, *, eps: float = 1e-20) -> tuple[torch.Tensor, bool]:
    """(g', conflicted): g' = g − (g·r / ‖r‖²) r if g·r < 0 (the component of g against r removed,
    so g'·r = 0), else g' = g. g, r: flat vectors of one length."""
    if g.shape != r.shape:
        raise ValueError(f"g and r must have one shape, got {tuple(g.shape)} and {tuple(r.shape)}")
    dot = torch.dot(g, r)
    if dot < 0:
        return g - (dot / r.dot(r).clamp_min(eps)) * r, True
    return g, False


def predicted_x0(model, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x̂_0 = (x_t − sqrt(1 − ᾱ_t) ε̂) / sqrt(ᾱ_t) (Ho et al. 2020, Eq. 4 solved for x_0)."""
    a = model.alpha_bar(t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def cycle_batches(data, *, batch_size: int, seed: int):
    """Endless (images, conditions) batches over a Dataset of (image, condition, ...) items."""
    return itertools.cycle(diffusion_loader(data, batch_size=batch_size, seed=seed))
