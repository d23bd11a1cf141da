"""Adapt-then-Unlearn (Tiwary, Guha, Panda & Prathosh, "Adapt then Unlearn: Exploiting Parameter
Space Semantics for Unlearning in Generative Adversarial Networks", arXiv 2309.14054, TMLR 2025):
the "gan" task of the method registry.

Setting (the paper's): a pretrained GAN whose training data is inaccessible; a user (here: an
evaluator classifier, `feedback_samples`) flags generated samples with the undesired feature as
negative and the others as positive.

Stage 1, negative adaptation (paper Sec. 3, "Stage-1"): a copy of the pretrained generator θ_G is
adapted on the negative samples with the adversarial loss plus the EWC regulariser of few-shot
GAN adaptation (Li et al., NeurIPS 2020), which the paper uses:

    θ_N = argmin_θ max_φ L_adv(θ, φ; negatives) + λ Σ_i F_i (θ_i − θ_G,i)²,
    F_i = E_z[(∂/∂θ_i log σ(D(G_θG(z))))²]   (diagonal Fisher of the generator's log-likelihood
                                               under the pretrained discriminator).

Stage 2, unlearning (paper Sec. 3, "Stage-2"): the ORIGINAL generator is trained on the positive
samples with its adversarial loss plus a repulsion regulariser pushing θ away from θ_N:

    θ_P = argmin_θ max_φ L_adv(θ, φ; positives) + γ L_repulsion(θ, θ_N),

with the paper's three repulsion forms (its "choice of repulsion loss"; d = ‖θ − θ_N‖²₂ over all
generator parameters):

    "el2"  exponential negative L2:  L = exp(−α d)
    "il2"  inverse L2:               L = 1 / d
    "nl2"  negative L2:              L = −d

Documented choice (distance_scale="initial", the default): d is measured in units of its value at
the start of stage 2, d₀ = ‖θ_G − θ_N‖²₂, i.e. d ← d / d₀, so that γ (and α for EL2) do not depend
on the parameter count or on how far stage 1 moved (the authors' code rescales the distance by a
power of ten for the same reason). This is the paper's form with γ (and α) rescaled by constants;
distance_scale="none" uses the raw squared norm exactly as written.

Both stages use the non-saturating loss with Adam(lr, betas (0.5, 0.999)) and start from the
pretrained discriminator (unlearnx.models.gan.adversarial_steps).

    from unlearnx.methods.gan import feedback_samples
    neg, pos = feedback_samples(gan, evaluator, undesired=0, n=2000, seed=0)
    res = ux.unlearn(gan, method="adapt_unlearn", forget=neg, retain=pos, repulsion="el2")
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from unlearnx._modes import training_mode
from unlearnx.methods.registry import UnlearningMethod, register_method
from unlearnx.methods.training import model_device
# A module import, not `from ... import`: unlearnx.models.gan uses unlearnx.methods.training, so it
# may still be initialising when the methods package registers this module.
from unlearnx.models import gan as gan_models

__all__ = ["AdaptThenUnlearn", "REPULSIONS", "repulsion_loss", "squared_distance", "generator_fisher",
           "ewc_penalty", "feedback_samples", "check_gan", "is_gan"]


def is_gan(model) -> bool:
    """`unlearnx.models.gan.is_gan`: True for a GAN bundle (.generator, .discriminator, int .latent_dim)."""
    return gan_models.is_gan(model)

REPULSIONS = ("el2", "il2", "nl2")
_PAPER = ("Tiwary, Guha, Panda & Prathosh, 'Adapt then Unlearn: Exploiting Parameter Space Semantics for "
          "Unlearning in Generative Adversarial Networks', arXiv 2309.14054 (TMLR 2025)")


def squared_distance(params, anchor) -> torch.Tensor:
    """d = Σ ‖θ_k − θ_N,k‖² over matching tensors (differentiable in `params`, `anchor` detached)."""
    params, anchor = list(params), list(anchor)
    if len(params) != len(anchor) or not params:
        raise ValueError(f"params and anchor must be equally long non-empty tensor lists, got {len(params)} and "
                         f"{len(anchor)}")
    return sum(((p - a.detach()) ** 2).sum() for p, a in zip(params, anchor))


def repulsion_loss(d: torch.Tensor, kind: str, *, alpha: float = 1.0) -> torch.Tensor:
    """The paper's repulsion term of a squared parameter distance d = ‖θ − θ_N‖²:
    "el2" exp(−α d), "il2" 1 / d, "nl2" −d (module docstring)."""
    if kind == "el2":
        return torch.exp(-alpha * d)
    if kind == "il2":
        return 1.0 / d
    if kind == "nl2":
        return -d
    raise ValueError(f"repulsion must be one of {REPULSIONS}, got {kind!r}")


def generator_fisher(gan, *, n: int = 64, seed: int = 0) -> list[torch.Tensor]:
    """Diagonal Fisher F_i = (1/n) Σ_z (∂/∂θ_i log σ(D(G(z))))² of the generator's parameters under
    the (frozen) discriminator, over n seeded latents: Li et al. 2020's EWC importance for GAN
    adaptation. Generator in eval mode (BatchNorm running statistics)."""
    G, D = gan.generator, gan.discriminator
    dev = model_device(G)
    z = gan_models.latents(n, gan.latent_dim, seed=seed, device=dev)
    params = [p for p in G.parameters()]
    fisher = [torch.zeros_like(p) for p in params]
    with training_mode(G, False), training_mode(D, False):
        for i in range(n):
            loglik = -F.softplus(-D(G(z[i:i + 1]))).sum()
            grads = torch.autograd.grad(loglik, params, allow_unused=True)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f.add_(g.detach() ** 2)
    return [f / n for f in fisher]


def ewc_penalty(params, anchor, fisher, lam: float) -> torch.Tensor:
    """λ Σ_i F_i (θ_i − θ_G,i)² (Li et al. 2020, the paper's stage-1 regulariser)."""
    return lam * sum((f * (p - a.detach()) ** 2).sum() for p, a, f in zip(params, anchor, fisher))


@torch.no_grad()
def feedback_samples(gan, evaluator: nn.Module, undesired, *, n: int = 2000, seed: int = 0
                     ) -> tuple[TensorDataset, TensorDataset]:
    """The paper's feedback step: `n` generated images (`sample_gan(gan, n, seed=seed)`) split by
    the evaluator into negatives (argmax class in `undesired`, an int or a collection of ints) and
    positives (all others). Returns `(negatives, positives)` TensorDatasets of images."""
    from unlearnx.eval.gan import undesired_mask

    images = gan_models.sample_gan(gan, n, seed=seed)
    neg = undesired_mask(evaluator, images, undesired)
    if not neg.any():
        raise ValueError(f"none of the n={n} generated samples has the undesired feature {undesired!r}; "
                         "raise n or check the evaluator")
    if neg.all():
        raise ValueError(f"all n={n} generated samples have the undesired feature {undesired!r}")
    return TensorDataset(images[neg]), TensorDataset(images[~neg])


@register_method("adapt_unlearn", task="gan")
class AdaptThenUnlearn(UnlearningMethod):
    """Adapt-then-Unlearn (module docstring): forget = negative samples, retain = positive samples
    (Datasets of images in [0, 1], e.g. from `feedback_samples`); the GAN bundle is edited in place.

    Hyper-parameters: adapt_steps / adapt_lr / ewc_lambda / fisher_samples (stage 1), steps / lr /
    gamma / repulsion / alpha / distance_scale (stage 2), batch_size (both).
    Defaults: the paper's optimiser (Adam 2e-4, betas (0.5, 0.999), as StyleGAN2/DCGAN) and EL2 (the
    form its code and README single out); the step counts, γ and λ are scaled to the small DCGAN of
    unlearnx.models.gan (the paper tunes γ per data set; its values are for StyleGAN2), see docs/gan.md.
    """

    defaults = {
        "adapt_steps": 200,
        "adapt_lr": 2e-4,
        "ewc_lambda": 100.0,
        "fisher_samples": 64,
        "steps": 300,
        "lr": 2e-4,
        "gamma": 1.0,
        "repulsion": "el2",
        "alpha": 1.0,
        "distance_scale": "initial",
        "batch_size": 64,
    }
    paper = _PAPER
    requires = ("forget", "retain")

    def validate(self) -> None:
        if self.hparams["repulsion"] not in REPULSIONS:
            raise ValueError(f"repulsion must be one of {REPULSIONS}, got {self.hparams['repulsion']!r}")
        if self.hparams["distance_scale"] not in ("initial", "none"):
            raise ValueError(f"distance_scale must be 'initial' or 'none', got {self.hparams['distance_scale']!r}")
        for key in ("adapt_lr", "steps", "fisher_samples"):
            if self.hparams[key] <= 0:
                raise ValueError(f"{key} must be > 0, got {self.hparams[key]!r}")

    def run(self, model, *, forget, retain, seed: int, progress: bool) -> dict:
        h = self.hparams
        negatives = TensorDataset(gan_models.images_of(forget).float())
        positives = TensorDataset(gan_models.images_of(retain).float())
        theta_g = [p.detach().clone() for p in model.generator.parameters()]

        # Stage 1: θ_N from a copy adapted on the negatives with the EWC regulariser.
        adapted = copy.deepcopy(model)
        log: dict = {}
        if h["adapt_steps"] > 0:
            fisher = generator_fisher(adapted, n=h["fisher_samples"], seed=seed)
            lam = h["ewc_lambda"]
            stage1 = gan_models.adversarial_steps(
                adapted, negatives, steps=h["adapt_steps"], lr=h["adapt_lr"], batch_size=h["batch_size"],
                seed=seed, progress=progress, desc="adapt (stage 1)",
                generator_penalty=lambda G: ewc_penalty(G.parameters(), theta_g, fisher, lam))
            log.update({f"adapt_{k}": v for k, v in stage1.items()})
        theta_n = [p.detach().clone() for p in adapted.generator.parameters()]
        del adapted
        d0 = float(squared_distance(theta_g, theta_n))
        log["distance_adapted"] = d0
        if d0 == 0.0:
            raise ValueError("stage 1 left the generator unchanged (θ_N = θ_G); give adapt_steps > 0")
        scale = d0 if h["distance_scale"] == "initial" else 1.0
        gamma, kind, alpha = h["gamma"], h["repulsion"], h["alpha"]

        # Stage 2: the original generator on the positives, + γ L_repulsion(θ, θ_N).
        def repel(G):
            return gamma * repulsion_loss(squared_distance(G.parameters(), theta_n) / scale, kind, alpha=alpha)

        stage2 = gan_models.adversarial_steps(
            model, positives, steps=h["steps"], lr=h["lr"], batch_size=h["batch_size"], seed=seed + 1,
            progress=progress, desc=f"unlearn (stage 2, {kind})", generator_penalty=repel if gamma > 0 else None)
        log.update(stage2)
        with torch.no_grad():
            log["distance_final"] = float(squared_distance(model.generator.parameters(), theta_n))
            log["distance_from_original"] = float(squared_distance(model.generator.parameters(), theta_g))
        return log


def check_gan(model) -> None:
    """TypeError unless `model` is a GAN bundle (`unlearnx.models.gan.is_gan`), for task "gan"."""
    if not gan_models.is_gan(model):
        raise TypeError(f"task 'gan' needs a GAN bundle (.generator, .discriminator, .latent_dim; e.g. "
                        f"unlearnx.models.gan.DCGAN), got {type(model).__name__}")
