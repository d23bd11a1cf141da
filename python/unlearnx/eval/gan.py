"""Metrics of GAN unlearning (docs/gan.md), all in an evaluator classifier trained in the same run:

* undesired share: the share of generated samples the evaluator assigns to the undesired class(es)
  (Adapt-then-Unlearn's "percentage of negative samples"; → 0, Retrain's value is the floor).
* evaluator-FID: the Fréchet distance (Heusel et al., NeurIPS 2017) between Gaussians fitted to the
  evaluator's penultimate features (the input of its last nn.Linear) of generated samples and of
  real RETAIN data (the data without the undesired class) — NOT Inception FID.
* precision / recall (Kynkäänniemi et al., NeurIPS 2019, Sec. 3): with k-NN hyperspheres
  B(φ, ‖φ − NN_k(φ)‖) around each feature vector of a set Φ, the manifold estimate
  f(φ, Φ) = 1 if φ lies in some ball of Φ; precision = mean_{φ_g} f(φ_g, Φ_r) (generated samples on
  the real manifold), recall = mean_{φ_r} f(φ_r, Φ_g) (real samples covered by the generator);
  k = 3 (the paper's default), in the same evaluator feature space.

    from unlearnx.eval.gan import gan_metrics
    m = gan_metrics(gan, evaluator, retain_images, undesired=0, n=2000, seed=123)
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from unlearnx._modes import training_mode
from unlearnx.eval.features import evaluator_features, fid_evaluator, frechet_distance

__all__ = ["evaluator_logits", "evaluator_features", "undesired_mask", "undesired_share", "frechet_distance",
           "fid_evaluator", "precision_recall", "gan_metrics"]


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluator_logits(clf: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The evaluator's logits `[N, C]` (CPU) on images `[N, C, H, W]`, in eval mode."""
    dev = _device(clf)
    with training_mode(clf, False):
        return torch.cat([clf(images[i:i + batch_size].to(dev)).float().cpu()
                          for i in range(0, len(images), batch_size)])




def _classes(undesired) -> list[int]:
    if isinstance(undesired, (int, np.integer)) and not isinstance(undesired, bool):
        return [int(undesired)]
    if isinstance(undesired, Iterable) and not isinstance(undesired, (str, bytes)):
        out = list(undesired)
        if out and all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in out):
            return [int(c) for c in out]
    raise ValueError(f"undesired must be a class index or a non-empty collection of them, got {undesired!r}")


def undesired_mask(clf: nn.Module, images: torch.Tensor, undesired) -> torch.Tensor:
    """Bool `[N]`: the evaluator's argmax class is one of `undesired` (int or collection of ints)."""
    classes = _classes(undesired)
    logits = evaluator_logits(clf, images)
    if max(classes) >= logits.shape[1] or min(classes) < 0:
        raise ValueError(f"undesired={undesired!r} is outside the evaluator's {logits.shape[1]} classes")
    return torch.isin(logits.argmax(1), torch.tensor(classes))


def undesired_share(clf: nn.Module, images: torch.Tensor, undesired) -> float:
    """Share in [0, 1] of `images` the evaluator assigns to an undesired class."""
    return float(undesired_mask(clf, images, undesired).float().mean())






def _kth_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    # distance of each row to its k-th nearest neighbour within x (itself excluded: column 0 is 0)
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values


def precision_recall(real_features, fake_features, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, Eq. 1-3) of generated features
    against real ones, k-NN radii with `k` (paper default 3). Returns (precision, recall) in [0, 1]."""
    real = torch.as_tensor(np.asarray(real_features), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(fake_features), dtype=torch.float64)
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"real_features and fake_features must be [N, F] with the same F, got "
                         f"{tuple(real.shape)} and {tuple(fake.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k >= min(len(real), len(fake)):
        raise ValueError(f"k must be an integer in [1, min(N_real, N_fake) - 1], got {k!r}")
    r_real, r_fake = _kth_radius(real, k), _kth_radius(fake, k)
    d = torch.cdist(fake, real)                                     # [N_fake, N_real]
    precision = (d <= r_real[None, :]).any(1).double().mean()
    recall = (d <= r_fake[:, None]).any(0).double().mean()
    return float(precision), float(recall)


def gan_metrics(gan, clf: nn.Module, retain_images: torch.Tensor, undesired, *, n: int = 2000, seed: int = 123,
                k: int = 3) -> dict[str, float]:
    """The GAN-unlearning table row of a GAN bundle: `n` samples (`sample_gan(gan, n, seed=seed)`);
    {"undesired_share", "fid_eval" (vs `retain_images`), "precision", "recall"} (module docstring)."""
    from unlearnx.models.gan import sample_gan

    images = sample_gan(gan, n, seed=seed)
    fake = evaluator_features(clf, images)
    real = evaluator_features(clf, retain_images)
    precision, recall = precision_recall(real, fake, k=k)
    return {"undesired_share": undesired_share(clf, images, undesired), "fid_eval": frechet_distance(fake, real),
            "precision": precision, "recall": recall}
