"""Regression unlearning metrics (Tarun et al. 2023, "Deep Regression Unlearning", ICML).

MAE on D_r / D_f / test, the L1-loss membership attack, and the anamnesis index (AIN): how many
relearning steps the unlearned model needs to recover the original model's forget loss, relative
to the retrained model.
"""
from __future__ import annotations

import copy
import math
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from unlearnx.data.datasets import check_dataset
from unlearnx.eval.classification import model_outputs
from unlearnx.eval.mia import member_rate_svc_from_features

__all__ = [
    "per_sample_l1",
    "l1_losses",
    "mean_absolute_error",
    "mia_svc_l1_loss",
    "make_relearn_fn",
    "relearn_steps",
    "anamnesis_index",
]


def per_sample_l1(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ℓ_i = mean_j |outputs[i, j] − targets[i, j]| over each sample's output entries -> `[N]`.

    outputs and targets must have the same number of entries per sample (e.g. `[N, 1]` and `[N]`).
    """
    n = outputs.shape[0]
    if targets.shape[0] != n or n == 0:
        raise ValueError(
            f"outputs and targets must have the same N > 0, got {tuple(outputs.shape)} and {tuple(targets.shape)}"
        )
    o, t = outputs.reshape(n, -1).double(), targets.reshape(n, -1).double()
    if o.shape != t.shape:
        raise ValueError(
            f"outputs and targets differ in entries per sample: {tuple(outputs.shape)} vs {tuple(targets.shape)}"
        )
    return (o - t).abs().mean(1)


def l1_losses(model: nn.Module, data, *, batch_size: int = 256, device=None) -> torch.Tensor:
    """Per-sample L1 losses ℓ_i of `model` on `data` (Dataset or DataLoader of `(x, y)`) -> `[N]`."""
    return per_sample_l1(*model_outputs(model, data, batch_size=batch_size, device=device))


def mean_absolute_error(model: nn.Module, data, *, batch_size: int = 256, device=None) -> float:
    """MAE = (1/N) Σ_i ℓ_i of `model` on `data` (a Dataset or DataLoader of `(x, y)`)."""
    return float(l1_losses(model, data, batch_size=batch_size, device=device).mean())


def mia_svc_l1_loss(model: nn.Module, retain, forget, test, *, batch_size: int = 256, device=None) -> float:
    """Regression MIA (Tarun et al. 2023), in [0, 1]: feature = per-sample L1 loss;
    SVC(C=3, rbf, gamma="auto") on all of D_r (member) vs the test set (non-member);
    score = mean predicted member on D_f."""
    feats = [l1_losses(model, d, batch_size=batch_size, device=device) for d in (retain, forget, test)]
    return member_rate_svc_from_features(*feats)


def make_relearn_fn(
    data: Dataset,
    *,
    lr: float = 1e-3,
    batch_size: int = 256,
    optimizer: str = "adam",
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.l1_loss,
    seed: int = 0,
    device=None,
) -> Callable[[nn.Module, int], None]:
    """A `relearn_fn(model, step)` that takes one optimizer step of `loss_fn` on batch `step`.

    Batches follow a seeded order (a fresh permutation of `data` per pass), so two models relearn
    on exactly the same batch sequence. Each model gets its own optimizer (Adam, lr 1e-3 as in
    Tarun et al.'s relearning, or plain SGD), created at its first step and kept while the model
    lives. `loss_fn(outputs, targets)` defaults to L1 (regression); pass F.cross_entropy for a
    classifier. The model is put in train mode.
    """
    check_dataset(data, "data")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    optimizers = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if optimizer not in optimizers:
        raise ValueError(f"optimizer must be one of {sorted(optimizers)}, got {optimizer!r}")
    n_batches = math.ceil(len(data) / batch_size)
    states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def batch_indices(step: int) -> list[int]:
        epoch, b = divmod(step, n_batches)
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + epoch))
        return perm[b * batch_size : (b + 1) * batch_size].tolist()

    def relearn_fn(model: nn.Module, step: int) -> None:
        if model not in states:
            states[model] = optimizers[optimizer](model.parameters(), lr=lr)
        opt = states[model]
        dev = next(model.parameters()).device if device is None else torch.device(device)
        x, y = next(iter(DataLoader(torch.utils.data.Subset(data, batch_indices(step)), batch_size=batch_size)))
        model.train()
        opt.zero_grad(set_to_none=True)
        out = model(x.to(dev))
        loss_fn(out[0] if isinstance(out, (tuple, list)) else out, y.to(dev)).backward()
        opt.step()

    return relearn_fn


def relearn_steps(
    model: nn.Module,
    relearn_fn: Callable[[nn.Module, int], None],
    forget_loss_fn: Callable[[nn.Module], float],
    target_loss: float,
    *,
    max_steps: int = 1000,
    progress: bool = False,
) -> tuple[int, bool]:
    """Relearn `model` in place until `forget_loss_fn(model) <= target_loss`.

    As in Tarun et al.'s code the loss is checked after each step, so the count is >= 1.
    Returns (steps, reached); when not reached within `max_steps`, (max_steps, False).
    """
    for step in tqdm(range(max_steps), desc="relearn", disable=not progress, leave=False):
        relearn_fn(model, step)
        if forget_loss_fn(model) <= target_loss:
            return step + 1, True
    return max_steps, False


def anamnesis_index(
    unlearned: nn.Module,
    retrained: nn.Module,
    original_forget_loss: float,
    relearn_fn: Callable[[nn.Module, int], None],
    *,
    forget: Dataset | None = None,
    forget_loss_fn: Callable[[nn.Module], float] | None = None,
    threshold: float = 1.05,
    max_steps: int = 1000,
    progress: bool = False,
) -> float:
    """Anamnesis index AIN = r(M_unlearned) / r(M_retrained) (Tarun et al. 2023).

    r(M) = number of relearning steps `relearn_fn(model, step)` (step = 0, 1, ...) after which
    M's forget loss is <= threshold · `original_forget_loss` (the ORIGINAL model's forget loss;
    threshold 1.05 = the paper's 5 % margin). The forget loss is `forget_loss_fn(model)`, or the
    MAE on `forget` when that is given instead (exactly one of the two). Both models are deep
    copies, so the arguments are left untouched; `make_relearn_fn` builds a `relearn_fn`.

    AIN ≈ 1: the unlearned model is as hard to re-teach as Retrain; AIN ≪ 1: the forgotten
    information is still latent. A model that does not reach the target within `max_steps`
    counts `max_steps` steps (a lower bound, with a warning).
    """
    if not isinstance(unlearned, nn.Module) or not isinstance(retrained, nn.Module):
        raise TypeError("unlearned and retrained must be torch.nn.Module instances")
    if not callable(relearn_fn):
        raise TypeError(f"relearn_fn must be callable(model, step), got {type(relearn_fn).__name__}")
    if not (isinstance(original_forget_loss, (int, float)) and math.isfinite(original_forget_loss)
            and original_forget_loss >= 0):
        raise ValueError(f"original_forget_loss must be a finite number >= 0, got {original_forget_loss!r}")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 1):
        raise ValueError(f"threshold must be a number >= 1, got {threshold!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    if (forget is None) == (forget_loss_fn is None):
        raise ValueError("give exactly one of forget or forget_loss_fn")
    if forget_loss_fn is None:
        check_dataset(forget, "forget")
        forget_loss_fn = lambda m: mean_absolute_error(m, forget)  # noqa: E731
    target = threshold * float(original_forget_loss)
    steps = {}
    for name, model in (("unlearned", unlearned), ("retrained", retrained)):
        steps[name], reached = relearn_steps(copy.deepcopy(model), relearn_fn, forget_loss_fn, target,
                                             max_steps=max_steps, progress=progress)
        if not reached:
            warnings.warn(f"anamnesis_index: the {name} model did not reach the target forget loss {target:.4g} "
                          f"within max_steps={max_steps}; counting {max_steps} steps", RuntimeWarning, stacklevel=2)
    return steps["unlearned"] / steps["retrained"]
