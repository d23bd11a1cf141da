"""Evaluator features and the Fréchet distance: the in-run evaluators' stand-in for Inception FID.

Shared by the generative evaluations (eval/diffusion.py, eval/gan.py): a classifier trained in the
same run gives penultimate features, and the Fréchet distance between Gaussians fitted to them is
the "evaluator-feature FID" (named as such everywhere; not comparable to Inception FID).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from unlearnx._modes import training_mode

__all__ = ["evaluator_features", "frechet_distance", "fid_evaluator"]


@torch.no_grad()
def evaluator_features(clf: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The input of the classifier's last nn.Linear (its penultimate features), [N, F] float64 CPU."""
    last = [m for m in clf.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError("clf has no nn.Linear layer to take penultimate features from")
    feats = []
    hook = last[-1].register_forward_hook(lambda m, inp, out: feats.append(inp[0].flatten(1).double().cpu()))
    dev = next(clf.parameters()).device
    try:
        with training_mode(clf, False):
            for i in range(0, len(images), batch_size):
                clf(images[i:i + batch_size].to(dev))
    finally:
        hook.remove()
    return torch.cat(feats)


def frechet_distance(a, b) -> float:
    """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½) between Gaussians fitted to the rows of a [N, F]
    and b [M, F] (Heusel et al. 2017, Eq. 6); scipy.linalg.sqrtm, the imaginary round-off dropped."""
    from scipy import linalg

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"a and b must be [N, F] with the same F and N >= 2, got {a.shape} and {b.shape}")
    diff = a.mean(0) - b.mean(0)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(sa @ sb)
    if not np.isfinite(covmean).all():
        eps = 1e-6 * np.eye(len(sa))
        covmean = linalg.sqrtm((sa + eps) @ (sb + eps))
    return float(diff @ diff + np.trace(sa) + np.trace(sb) - 2 * np.trace(np.real(covmean)))


def fid_evaluator(clf: nn.Module, generated: torch.Tensor, real: torch.Tensor) -> float:
    """Evaluator-feature FID of `generated` against `real` images."""
    return frechet_distance(evaluator_features(clf, generated), evaluator_features(clf, real))
