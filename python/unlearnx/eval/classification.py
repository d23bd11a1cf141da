"""Classification metrics of the SalUn / Sparse protocol and of corrective unlearning.

Definitions follow docs/metrics.md (Jia et al. 2023 "Model Sparsity Can Simplify Machine
Unlearning"; Fan et al. 2024 "SalUn"; Chundawat et al. 2023 "Bad Teacher" for ZRF and the
entropy attack; Goel et al. 2024 "Corrective Machine Unlearning"). Accuracies are percentages.

Model-level functions (`accuracy(model, data)`) run `predict` and call the pure function of
arrays (`accuracy_from_probs(probs, labels)`), which the tests check on hand-computed cases.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from unlearnx._modes import training_mode
from unlearnx.data.datasets import check_dataset
from unlearnx.distributed.context import current as current_context
from unlearnx.distributed.reduce import gather_ordered, owned
from unlearnx.eval.mia import (
    member_rate_lr_from_features,
    mia_efficacy_from_features,
    softmax_entropy,
    true_label_confidence,
)

__all__ = [
    "model_outputs",
    "predict",
    "accuracy_from_probs",
    "accuracy",
    "unlearning_accuracy",
    "remaining_accuracy",
    "test_accuracy",
    "mia_efficacy_svc_confidence",
    "mia_member_rate_lr_entropy",
    "js_divergence",
    "zrf_from_probs",
    "zrf",
    "attack_success_rate_from_probs",
    "attack_success_rate",
    "acc_corr",
    "acc_retain",
]


def _loader(data, batch_size: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    check_dataset(data, "data")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def model_outputs(model: nn.Module, data, *, batch_size: int = 256, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model` over `data` in eval mode under `torch.no_grad`; return (outputs, targets) on CPU.

    data: a map-style Dataset of `(x, y)` items (read in order) or a DataLoader of `(x, y)`
    batches. A model that returns a tuple contributes its first element. The model's
    train/eval mode is restored afterwards. outputs `[N, ...]` float32, targets `[N, ...]`.
    Under torchrun every rank must call it: each runs its share of the batches and every rank
    gets all N rows in data order (the metrics built on it then equal one process's).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    loader = _loader(data, batch_size)
    device = _model_device(model) if device is None else torch.device(device)
    ctx = current_context()
    parts = {}
    with training_mode(model):
        with torch.no_grad():
            # Under torchrun each rank runs the batches it owns; gather_ordered puts them back in
            # data order on every rank (one process: every batch, in order).
            for k, batch in owned(loader, ctx):
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise ValueError("data must yield (x, y) pairs")
                x, y = batch[0], batch[1]
                out = model(x.to(device))
                if isinstance(out, (tuple, list)):
                    out = out[0]
                parts[k] = (out.detach().float().cpu(), torch.as_tensor(y).cpu())
    parts = gather_ordered(parts, ctx)
    if not parts:
        raise ValueError("data is empty")
    return torch.cat([o for o, _ in parts]), torch.cat([t for _, t in parts])


def predict(model: nn.Module, data, *, batch_size: int = 256, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and labels: (probs `[N, C]` float32, labels `[N]` int64), on CPU."""
    logits, labels = model_outputs(model, data, batch_size=batch_size, device=device)
    if logits.dim() != 2:
        raise ValueError(f"model must return logits [B, C] for classification, got {tuple(logits.shape[1:])} per batch")
    if labels.is_floating_point() or labels.dim() != 1:
        raise ValueError(f"data must hold integer class labels [N], got {labels.dtype} {tuple(labels.shape)}")
    return torch.softmax(logits, dim=1), labels.long()


def _check_probs_labels(probs: torch.Tensor, labels: torch.Tensor) -> None:
    if probs.dim() != 2 or labels.dim() != 1 or probs.shape[0] != labels.shape[0] or labels.numel() == 0:
        raise ValueError(
            f"probs must be [N, C] and labels [N] with N > 0, got {tuple(probs.shape)} and {tuple(labels.shape)}"
        )


def accuracy_from_probs(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """100 · mean(argmax_c probs[i, c] == labels[i]). probs (or logits) `[N, C]`, labels `[N]`."""
    _check_probs_labels(probs, labels)
    return float(100.0 * (probs.argmax(1) == labels).double().mean())


def accuracy(model: nn.Module, data, *, batch_size: int = 256, device=None) -> float:
    """Top-1 accuracy of `model` on `data`, in percent."""
    return accuracy_from_probs(*predict(model, data, batch_size=batch_size, device=device))


def unlearning_accuracy(model: nn.Module, forget, *, batch_size: int = 256, device=None) -> float:
    """UA = 100 − accuracy on D_f (percent)."""
    return 100.0 - accuracy(model, forget, batch_size=batch_size, device=device)


def remaining_accuracy(model: nn.Module, retain, *, batch_size: int = 256, device=None) -> float:
    """RA = accuracy on D_r (percent)."""
    return accuracy(model, retain, batch_size=batch_size, device=device)


def test_accuracy(model: nn.Module, test, *, batch_size: int = 256, device=None) -> float:
    """TA = accuracy on the test set (percent); for class-wise forgetting pass the test set
    without the forgotten class (`class_forget` builds it)."""
    return accuracy(model, test, batch_size=batch_size, device=device)


test_accuracy.__test__ = False  # its name starts with "test": keep pytest from collecting it


def mia_efficacy_svc_confidence(model: nn.Module, retain, forget, test, *, batch_size: int = 256, device=None) -> float:
    """MIA-Efficacy (SalUn / Sparse), percent: feature = softmax probability of the true label;
    SVC(C=3, rbf, gamma="auto") on the first |test| retain samples (member) vs the test set
    (non-member); score = 100 · fraction of D_f predicted non-member. See
    `mia_efficacy_from_features` (all retain samples are used when |retain| < |test|)."""
    feats = [true_label_confidence(*predict(model, d, batch_size=batch_size, device=device))
             for d in (retain, forget, test)]
    return mia_efficacy_from_features(*feats)


def mia_member_rate_lr_entropy(model: nn.Module, retain, forget, test, *, batch_size: int = 256, device=None) -> float:
    """Entropy member rate (bad teacher / SSD), in [0, 1]: feature = softmax entropy;
    LogisticRegression(class_weight="balanced") on retain (member) vs test (non-member);
    score = mean predicted member on D_f. See `member_rate_lr_from_features`."""
    feats = [softmax_entropy(predict(model, d, batch_size=batch_size, device=device)[0])
             for d in (retain, forget, test)]
    return member_rate_lr_from_features(*feats)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-row Jensen-Shannon divergence in nats: JS(p‖q) = ½ KL(p‖m) + ½ KL(q‖m), m = (p+q)/2.

    p, q `[N, C]` probability rows -> `[N]` in [0, ln 2].
    """
    if p.shape != q.shape or p.dim() != 2:
        raise ValueError(
            f"p and q must be probability arrays of the same shape [N, C], got {tuple(p.shape)} and {tuple(q.shape)}"
        )
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor) -> torch.Tensor:
        # 0 · ln(0 / m) = 0; where a > 0, m >= a/2 > 0, so the ratio is finite.
        return torch.where(a > 0, a * (a.clamp_min(1e-300) / m.clamp_min(1e-300)).log(), torch.zeros_like(a)).sum(1)

    return 0.5 * kl(p) + 0.5 * kl(q)


def zrf_from_probs(p_model: torch.Tensor, p_random: torch.Tensor) -> float:
    """ZRF = 1 − (1/|D_f|) Σ_i JS(p_model(x_i) ‖ p_random(x_i)) (Chundawat et al. 2023).

    Natural-log JS, so ZRF ∈ [1 − ln 2, 1] ≈ [0.307, 1]; 1 = the model behaves exactly like the
    randomly initialised one on D_f. (The reference code's `F.kl_div` reduction averages over
    classes too; this is the per-sample JS divergence the paper defines.)
    """
    return float(1.0 - js_divergence(p_model, p_random).mean())


def zrf(model: nn.Module, random_model: nn.Module, forget, *, batch_size: int = 256, device=None) -> float:
    """ZRF of `model` on D_f against `random_model` (same architecture, random initialisation)."""
    p_model, _ = predict(model, forget, batch_size=batch_size, device=device)
    p_random, _ = predict(random_model, forget, batch_size=batch_size, device=device)
    return zrf_from_probs(p_model, p_random)


def attack_success_rate_from_probs(probs: torch.Tensor, target_class: int) -> float:
    """100 · fraction of rows whose argmax is `target_class`. probs `[N, C]`."""
    if probs.dim() != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must be [N, C] with N > 0, got {tuple(probs.shape)}")
    if isinstance(target_class, bool) or not isinstance(target_class, int) or not 0 <= target_class < probs.shape[1]:
        raise ValueError(f"target_class must be an integer in [0, {probs.shape[1]}), got {target_class!r}")
    return float(100.0 * (probs.argmax(1) == target_class).double().mean())


def attack_success_rate(
    model: nn.Module, triggered_test, target_class: int, *, batch_size: int = 256, device=None
) -> float:
    """BadNets attack success rate, percent: triggered test images (true class ≠ target) that
    the model assigns to `target_class`."""
    probs, _ = predict(model, triggered_test, batch_size=batch_size, device=device)
    return attack_success_rate_from_probs(probs, target_class)


def acc_corr(model: nn.Module, corrupted_test, *, batch_size: int = 256, device=None) -> float:
    """Acc_corr (Goel et al. 2024), percent: accuracy with clean labels on the test samples the
    manipulation targets (`extra["triggered_test"]` for BadNets, `extra["confused_test"]` for
    interclass confusion)."""
    return accuracy(model, corrupted_test, batch_size=batch_size, device=device)


def acc_retain(model: nn.Module, clean_test, *, batch_size: int = 256, device=None) -> float:
    """Acc_retain (Goel et al. 2024), percent: accuracy on clean test samples (`extra["clean_test"]`)."""
    return accuracy(model, clean_test, batch_size=batch_size, device=device)
