"""Membership-inference attacks of the unlearning benchmarks, as pure functions of features.

Each attack trains a binary member (1) / non-member (0) classifier on features of the retain set
(members) and the test set (non-members), then predicts on the forget set. The model-level
wrappers that compute the features live in `unlearnx.eval.classification` and
`unlearnx.eval.regression`; these functions take the features directly so they can be checked
on hand-built cases.

Features are float arrays `[N]` (one scalar per sample) or `[N, F]`.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "true_label_confidence",
    "softmax_entropy",
    "mia_efficacy_from_features",
    "member_rate_lr_from_features",
    "member_rate_svc_from_features",
]


def _features(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty feature array [N] or [N, F], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def _attack_data(retain, test, forget):
    r, t, f = _features(retain, "retain"), _features(test, "test"), _features(forget, "forget")
    if not (r.shape[1] == t.shape[1] == f.shape[1]):
        raise ValueError(f"retain, test and forget features differ in width: {r.shape[1]}, {t.shape[1]}, {f.shape[1]}")
    return r, t, f


def _svc():
    from sklearn.svm import SVC

    # The attack of SalUn / Sparse (Jia et al. 2023) and Deep Regression Unlearning (Tarun et al. 2023).
    return SVC(C=3, kernel="rbf", gamma="auto")


def true_label_confidence(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """p_y(x): the softmax probability of the true label. probs `[N, C]`, labels `[N]` -> `[N]`."""
    if probs.dim() != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"probs must be [N, C] and labels [N], got {tuple(probs.shape)} and {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in [0, {probs.shape[1]}), got min {labels.min()} max {labels.max()}")
    return probs.gather(1, labels.long()[:, None]).squeeze(1)


def softmax_entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ_c p_c ln p_c per row (natural log, 0·ln 0 = 0). probs `[N, C]` -> `[N]`."""
    if probs.dim() != 2:
        raise ValueError(f"probs must be [N, C], got {tuple(probs.shape)}")
    return -torch.where(probs > 0, probs * probs.clamp_min(1e-45).log(), torch.zeros_like(probs)).sum(1)


def mia_efficacy_from_features(retain, forget, test) -> float:
    """MIA-Efficacy of SalUn / Sparse (Jia et al. 2023), in percent.

    An SVC(C=3, kernel="rbf", gamma="auto") is trained on the first |test| retain features
    (label 1, member) against all test features (label 0); the score is
    100 · (fraction of forget features predicted non-member). When |retain| < |test| all retain
    features are used (the reference code would fail there). Higher = D_f looks less seen.
    """
    r, t, f = _attack_data(retain, test, forget)
    r = r[: len(t)]
    clf = _svc().fit(np.concatenate([r, t]), np.concatenate([np.ones(len(r)), np.zeros(len(t))]))
    return float(100.0 * (1.0 - clf.predict(f).mean()))


def member_rate_lr_from_features(retain, forget, test, *, random_state: int = 0) -> float:
    """Member rate of the bad-teacher / SSD attack (Chundawat et al. 2023; Foster et al. 2024).

    LogisticRegression(class_weight="balanced") is trained on all retain features (label 1)
    against all test features (label 0); the score is the mean predicted label on the forget
    features, a fraction in [0, 1] (not percent). Lower = D_f looks less seen.
    """
    from sklearn.linear_model import LogisticRegression

    r, t, f = _attack_data(retain, test, forget)
    clf = LogisticRegression(class_weight="balanced", random_state=random_state)
    clf.fit(np.concatenate([r, t]), np.concatenate([np.ones(len(r)), np.zeros(len(t))]))
    return float(clf.predict(f).mean())


def member_rate_svc_from_features(retain, forget, test) -> float:
    """Member rate of the Deep Regression Unlearning attack (Tarun et al. 2023).

    SVC(C=3, kernel="rbf", gamma="auto") on all retain features (label 1) against all test
    features (label 0); the score is the mean predicted label on the forget features, in [0, 1].
    """
    r, t, f = _attack_data(retain, test, forget)
    clf = _svc().fit(np.concatenate([r, t]), np.concatenate([np.ones(len(r)), np.zeros(len(t))]))
    return float(clf.predict(f).mean())
