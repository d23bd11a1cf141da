"""Fisher forgetting: Gaussian noise shaped by the retain set's Fisher information.

Golatkar, Achille, Soatto, "Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep
Networks", CVPR 2020.
"""
from __future__ import annotations

import math

import torch

from unlearnx.methods.registry import UnlearningMethod, register_method
from unlearnx.stats import fisher_diagonal

__all__ = ["FisherForgetting", "fisher_noise_std"]


def fisher_noise_std(fisher: torch.Tensor, *, alpha: float, max_std: float) -> torch.Tensor:
    """σ = min(√(α/F), max_std) elementwise, with F = 0 (a weight D_r does not use) -> σ = max_std.

    Computed as √(α / max(F, α/max_std²)) so that F = 0 never divides by zero; α = 0 gives σ = 0.
    """
    if not math.isfinite(alpha) or alpha < 0 or not math.isfinite(max_std) or max_std < 0:
        raise ValueError(f"alpha and max_std must be finite and >= 0, got {alpha!r}, {max_std!r}")
    if not bool(torch.isfinite(fisher).all()) or bool((fisher < 0).any()):
        raise ValueError("fisher must be finite and >= 0")
    if alpha == 0.0 or max_std == 0.0:
        return torch.zeros_like(fisher)
    floor = alpha / (max_std * max_std)
    return (alpha / fisher.clamp(min=floor)).sqrt().clamp(max=max_std)


@register_method("fisher")
class FisherForgetting(UnlearningMethod):
    """FF (Fisher forgetting): θ ← θ + σ ⊙ ε, ε ~ N(0, I), σ = min(√(α/F), σ_max) elementwise, where
    F = (1/N) Σ_{i∈D_r} (∇θ CE(f_θ(x_i), y_i))² is the per-sample (empirical) diagonal Fisher of the
    retain set (unlearnx.stats.fisher_diagonal, mode "per_sample", eval mode). Weights D_r relies on
    get little noise; weights it does not use get σ_max (F = 0 is guarded, no NaN).

    Defaults: α 1e-6 (the reference code's value), σ_max = `max_std` 1e-3 (reference/methods.md).
    The Golatkar code also clamps per-layer variances and zeroes the forgotten class's output row
    in class-wise forgetting; that class-specific edit is not part of this method. BatchNorm
    running statistics are untouched. The noise is drawn from a CPU generator seeded by `seed`
    (identical on every device).
    """

    paper = ("Golatkar, Achille, Soatto, 'Eternal Sunshine of the Spotless Net: Selective Forgetting in "
             "Deep Networks', CVPR 2020")
    requires = ("retain",)
    defaults = {"alpha": 1e-6, "max_std": 1e-3, "batch_size": 64}

    def run(self, model, *, forget, retain, seed, progress):
        hp = self.hparams
        fisher = fisher_diagonal(model, retain, mode="per_sample", progress=progress)
        params = dict(model.named_parameters())
        gen = torch.Generator().manual_seed(seed)
        mean_std = []
        with torch.no_grad():
            for name, f in fisher.items():
                p = params[name]
                std = fisher_noise_std(f, alpha=hp["alpha"], max_std=hp["max_std"])
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device)
                p.add_((std * noise).to(p.dtype))
                mean_std.append(float(std.mean()))
        return {"mean_noise_std": sum(mean_std) / max(len(mean_std), 1),
                "zero_fisher_fraction": sum(int((f == 0).sum()) for f in fisher.values())
                / max(sum(f.numel() for f in fisher.values()), 1)}
