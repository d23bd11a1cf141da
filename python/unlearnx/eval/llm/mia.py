"""Membership-inference scores for language models, and the AUC of forget vs holdout.

Every score is "higher = less likely a member" (docs/metrics.md), computed per item on its
scored tokens (the answer of a QA item, every token of a text):

    LOSS       avg NLL = -(1/n) sum_t log p_t                           (Yeom et al., 2018)
    ZLib       avg NLL / len(zlib.compress(text))                       (Carlini et al., 2021)
    Min-K%     -mean of the lowest k% of log p_t              (Shi et al., 2024)
    Min-K%++   -mean of the lowest k% of (log p_t - mu_t) / sigma_t     (Zhang et al., 2024)
    GradNorm   mean over parameter tensors of ||grad_W avg NLL||_2, batch of one
    Reference  avg NLL(target) - avg NLL(reference model)               (Carlini et al., 2022)

with k% of n tokens = max(1, int(k * n)) (int() truncates as MUSE's code does; at least one
token so a short item never gives the mean of nothing). `mia_auc` is sklearn's ROC AUC with the
forget items labelled 0 and the holdout items 1: ~1 when the model separates its training data
from unseen data, ~0.5 when it cannot.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch

from unlearnx._modes import training_mode
from unlearnx.data.lm_batches import QATemplate, pad_batch
from unlearnx.data.text import QAItem
from unlearnx.eval.llm.scoring import TokenScores, encode_items, score_tokens

__all__ = [
    "MIA_ATTACKS",
    "loss_scores",
    "zlib_scores",
    "min_k_scores",
    "min_k_plus_plus_scores",
    "gradnorm_scores",
    "reference_scores",
    "mia_auc",
    "mia_attacks",
]

MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k++", "gradnorm", "reference")


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 1:
        raise ValueError(f"k: must be a fraction in (0, 1], got {k!r}")


def _lowest_k_mean(values: np.ndarray, k: float) -> float:
    n = max(1, int(len(values) * k))
    return float(np.sort(values)[:n].mean())


def loss_scores(scores: TokenScores) -> np.ndarray:
    """[N] LOSS attack: average token NLL."""
    return scores.mean_nll()


def zlib_scores(scores: TokenScores, texts: Sequence[str]) -> np.ndarray:
    """[N] ZLib attack: avg NLL / len(zlib.compress(text.encode("utf-8"))), `texts` the scored texts."""
    if len(texts) != len(scores):
        raise ValueError(f"texts: {len(texts)} texts for {len(scores)} scored items")
    sizes = np.array([len(zlib.compress(t.encode("utf-8"))) for t in texts], dtype=np.float64)
    return scores.mean_nll() / sizes


def min_k_scores(scores: TokenScores, *, k: float = 0.4) -> np.ndarray:
    """[N] Min-K% attack: -mean of the lowest k fraction of the token log-probabilities."""
    _check_k(k)
    return np.array([-_lowest_k_mean(lp, k) for lp in scores.logp])


def min_k_plus_plus_scores(scores: TokenScores, *, k: float = 0.4) -> np.ndarray:
    """[N] Min-K%++ attack: -mean of the lowest k fraction of z_t = (log p_t - mu_t) / sigma_t,
    mu_t = sum_v p log p, sigma_t^2 = sum_v p (log p)^2 - mu_t^2 (the next-token distribution's
    mean and variance of log p). sigma is floored at 1e-12: a one-hot prediction has none."""
    _check_k(k)
    return np.array([-_lowest_k_mean((lp - mu) / np.sqrt(np.maximum(var, 1e-24)), k)
                     for lp, mu, var in zip(scores.logp, scores.mu, scores.var)])


def gradnorm_scores(model: torch.nn.Module, features: Sequence[dict], *, pad_token_id: int,
                    progress: bool = False) -> np.ndarray:
    """[N] GradNorm attack: (1/|P|) sum_{W in P} ||d avgNLL(item) / dW||_2 over the parameter
    tensors P that require grad, one item at a time (batch of one). The model's gradients are
    cleared afterwards; its weights are not changed."""
    from tqdm import tqdm

    from unlearnx.models.lm_training import answer_nll

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: has no parameter that requires grad")
    out = []
    with training_mode(model):
        device = params[0].device
        for f in tqdm(features, desc="gradnorm", disable=not progress):
            batch = {k: v.to(device) for k, v in pad_batch([f], pad_token_id=pad_token_id).items()}
            grads = torch.autograd.grad(answer_nll(model, batch).sum(), params, allow_unused=True)
            norms = [g.float().norm() if g is not None else torch.zeros((), device=device) for g in grads]
            out.append(float(torch.stack(norms).mean()))
    return np.array(out)


def reference_scores(target: TokenScores, reference: TokenScores) -> np.ndarray:
    """[N] Reference attack: avg NLL under the target minus avg NLL under a reference model."""
    if len(target) != len(reference):
        raise ValueError(f"reference: scores {len(reference)} items, target {len(target)}")
    return target.mean_nll() - reference.mean_nll()


def mia_auc(forget_scores, holdout_scores) -> float:
    """ROC AUC (sklearn) with forget items labelled 0 and holdout items 1, scores "higher = less
    likely member": P(score(holdout) > score(forget)) + 0.5 P(tie)."""
    from sklearn.metrics import roc_auc_score

    f = np.asarray(forget_scores, dtype=np.float64).ravel()
    h = np.asarray(holdout_scores, dtype=np.float64).ravel()
    for name, a in (("forget_scores", f), ("holdout_scores", h)):
        if a.size == 0 or not np.isfinite(a).all():
            raise ValueError(f"{name}: must be a non-empty array of finite numbers")
    labels = np.r_[np.zeros(f.size), np.ones(h.size)]
    return float(roc_auc_score(labels, np.r_[f, h]))


def _scored_text(item) -> str:
    if isinstance(item, QAItem):
        return item.answer
    if isinstance(item, str):
        return item
    return item[1]


def mia_attacks(model: torch.nn.Module, tokenizer, forget: Sequence, holdout: Sequence, *,
                attacks: Sequence[str] = ("loss", "zlib", "min_k", "min_k++"), k: float = 0.4,
                reference_model: torch.nn.Module | None = None, template: QATemplate = QATemplate(),
                batch_size: int = 32, progress: bool = False) -> dict[str, dict]:
    """Run each attack on forget (members) and holdout (non-members) items.

    Items are QAItems / (question, answer) pairs (answer tokens scored; ZLib compresses the
    answer) or plain texts. Returns {attack: {"auc": float, "forget": [N_f], "holdout": [N_h]}}.
    "reference" needs `reference_model`; "gradnorm" runs one backward pass per item.
    """
    unknown = [a for a in attacks if a not in MIA_ATTACKS]
    if unknown or not attacks:
        raise ValueError(f"attacks: unknown {unknown}; expected a non-empty subset of {MIA_ATTACKS}")
    if "reference" in attacks and reference_model is None:
        raise ValueError("reference_model: required by the 'reference' attack")
    _check_k(k)
    pad = tokenizer.pad_token_id
    feats = {name: encode_items(tokenizer, items, template=template) for name, items in
             (("forget", forget), ("holdout", holdout))}
    texts = {"forget": [_scored_text(i) for i in forget], "holdout": [_scored_text(i) for i in holdout]}
    scored = {name: score_tokens(model, f, pad_token_id=pad, batch_size=batch_size, progress=progress)
              for name, f in feats.items()}
    ref = ({name: score_tokens(reference_model, f, pad_token_id=pad, batch_size=batch_size, progress=progress)
            for name, f in feats.items()} if "reference" in attacks else None)
    out = {}
    for attack in attacks:
        per = {}
        for name in ("forget", "holdout"):
            s = scored[name]
            if attack == "loss":
                per[name] = loss_scores(s)
            elif attack == "zlib":
                per[name] = zlib_scores(s, texts[name])
            elif attack == "min_k":
                per[name] = min_k_scores(s, k=k)
            elif attack == "min_k++":
                per[name] = min_k_plus_plus_scores(s, k=k)
            elif attack == "gradnorm":
                per[name] = gradnorm_scores(model, feats[name], pad_token_id=pad, progress=progress)
            else:
                per[name] = reference_scores(s, ref[name])
        out[attack] = {"auc": mia_auc(per["forget"], per["holdout"]),
                       "forget": per["forget"].tolist(), "holdout": per["holdout"].tolist()}
    return out
