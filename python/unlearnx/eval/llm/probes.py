"""Robustness probes: does knowledge an unlearning method removed come back?

    relearning_attack        fine-tune a copy for a few steps on part of the forget set and
                             measure the answer probability on the rest (Hu et al., 2024;
                             Lynch et al., 2024, "Eight methods to evaluate robust unlearning")
    quantize_weights /       round every weight matrix to a 4-bit symmetric grid (per group of
    quantization_probe       `group_size` inputs, absmax scale, round to nearest) and back, then
                             measure the forget answers (Zhang et al., 2024, "Catastrophic failure
                             of LLM unlearning via quantization")
    linear_probe             logistic regression on hidden states separating the true fact
                             (paraphrased answer) from a wrong one (a perturbed answer),
                             cross-validated across questions: knowledge still linearly
                             readable inside the model scores above chance (0.5)
    in_context_reintroduction   give the model other forget facts about the same subject in
                             the prompt and measure the answer probability of the held-out ones

Each returns before/after aggregates and per-item values; "probability" is TOFU's per-item
p = exp(-avgNLL(answer)).
"""
from __future__ import annotations

import copy
import random
from collections.abc import Sequence

import numpy as np
import torch

from unlearnx.data.lm_batches import QADataset, QATemplate, encode_qa
from unlearnx.data.text import QAItem
from unlearnx.eval.llm.scoring import encode_items, hidden_states, score_tokens

__all__ = [
    "answer_probability",
    "relearning_attack",
    "quantize_weights",
    "quantization_probe",
    "linear_probe",
    "in_context_reintroduction",
]


def _qa(items, name: str, minimum: int = 1) -> list[QAItem]:
    if isinstance(items, (str, QAItem)) or not isinstance(items, Sequence) or len(items) < minimum:
        raise ValueError(f"{name}: expected a sequence of at least {minimum} QAItem")
    for i, it in enumerate(items):
        if not isinstance(it, QAItem):
            raise TypeError(f"{name}[{i}]: expected a QAItem, got {type(it).__name__}")
    return list(items)


def _fraction(fraction) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"fraction: must be in (0, 1), got {fraction!r}")


def _split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    order = list(range(len(items)))
    random.Random(f"unlearnx-probe:{seed}").shuffle(order)
    k = min(len(items) - 1, max(1, round(fraction * len(items))))
    return [items[i] for i in sorted(order[:k])], [items[i] for i in sorted(order[k:])]


def answer_probability(model: torch.nn.Module, tokenizer, items: Sequence, *, template: QATemplate = QATemplate(),
                       batch_size: int = 32) -> np.ndarray:
    """[N] p = exp(-avgNLL(answer)) of QA items (or pre-encoded features)."""
    feats = items if items and isinstance(items[0], dict) else encode_items(tokenizer, items, template=template)
    return np.exp(-score_tokens(model, feats, pad_token_id=tokenizer.pad_token_id, batch_size=batch_size).mean_nll())


def _before_after(before: np.ndarray, after: np.ndarray, **extra) -> dict:
    return {"before": float(before.mean()), "after": float(after.mean()),
            "recovery": float(after.mean() - before.mean()),
            "per_item_before": before.tolist(), "per_item_after": after.tolist(), **extra}


def relearning_attack(model: torch.nn.Module, tokenizer, forget: Sequence[QAItem], *, fraction: float = 0.5,
                      epochs: int = 2, lr: float = 1e-3, batch_size: int = 8, seed: int = 0,
                      template: QATemplate = QATemplate(), progress: bool = False) -> dict:
    """Fine-tune a copy of `model` on a seeded `fraction` of the forget items (AdamW, no warm-up,
    lr decaying linearly to 0; `finetune_lm`) and compare the answer probability of the
    other items before and after. `lr` 1e-3 suits the tiny built-in models; use ~1e-5 for
    billion-parameter ones. The model itself is not modified.

    Returns {"before", "after", "recovery" = after - before, "per_item_before",
    "per_item_after", "steps"}."""
    from unlearnx.models.lm_training import finetune_lm

    forget = _qa(forget, "forget", 2)
    _fraction(fraction)
    attack, held = _split(forget, fraction, seed)
    before = answer_probability(model, tokenizer, held, template=template)
    attacked = copy.deepcopy(model)
    losses = finetune_lm(attacked, QADataset(attack, tokenizer, template=template), epochs=epochs, lr=lr,
                         batch_size=batch_size, seed=seed, warmup_steps=0, progress=progress)
    after = answer_probability(attacked, tokenizer, held, template=template)
    return _before_after(before, after, steps=len(losses), attack_items=len(attack))


@torch.no_grad()
def quantize_weights(model: torch.nn.Module, *, bits: int = 4, group_size: int = 128) -> torch.nn.Module:
    """A copy of `model` whose floating-point parameters with >= 2 dims (linear, embedding and
    expert weights) are rounded to a symmetric `bits`-bit grid and back:

        scale_g = max_{i in g} |w_i| / (2^(bits-1) - 1),  w_i <- clamp(round(w_i / scale_g),
                  -2^(bits-1), 2^(bits-1) - 1) * scale_g

    over groups g of `group_size` consecutive entries of the last dimension (round-to-nearest,
    as weight-only int4 schemes without calibration do). Norms and biases stay in full precision.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits: must be an int in [2, 8], got {bits!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size: must be an int >= 1, got {group_size!r}")
    out = copy.deepcopy(model)
    qmax = 2 ** (bits - 1) - 1
    for p in out.parameters():
        if p.dim() < 2 or not p.is_floating_point():
            continue
        w = p.float().reshape(-1, p.shape[-1])
        cols = w.shape[1]
        pad = (-cols) % group_size
        g = torch.nn.functional.pad(w, (0, pad)).reshape(w.shape[0], -1, group_size)
        scale = g.abs().amax(-1, keepdim=True) / qmax
        q = torch.where(scale > 0, torch.clamp(torch.round(g / scale.clamp(min=1e-30)), -qmax - 1, qmax) * scale, g)
        p.copy_(q.reshape(w.shape[0], -1)[:, :cols].reshape(p.shape).to(p.dtype))
    return out


def quantization_probe(model: torch.nn.Module, tokenizer, forget: Sequence[QAItem], *, bits: int = 4,
                       group_size: int = 128, template: QATemplate = QATemplate()) -> dict:
    """Forget-answer probability of `model` and of `quantize_weights(model, bits, group_size)`.

    Returns {"before", "after", "recovery", "per_item_before", "per_item_after"}."""
    forget = _qa(forget, "forget")
    before = answer_probability(model, tokenizer, forget, template=template)
    after = answer_probability(quantize_weights(model, bits=bits, group_size=group_size), tokenizer, forget,
                               template=template)
    return _before_after(before, after)


def linear_probe(model: torch.nn.Module, tokenizer, items: Sequence[QAItem], *, layer: int = -1, folds: int = 5,
                 template: QATemplate = QATemplate(), batch_size: int = 32) -> dict:
    """Is the forgotten fact still linearly readable from the hidden states?

    For each item, two sequences: question + paraphrased answer (label 1, the true fact) and
    question + its first perturbed answer (label 0, same wording, wrong fact). Features: the
    `layer` hidden state averaged over the answer positions (`scoring.hidden_states`). A
    standardized LogisticRegression is scored by GroupKFold cross-validation, both sequences of
    a question in the same fold, so the probe must generalize to unseen questions.

    Returns {"accuracy": mean held-out accuracy (chance 0.5), "per_item": fraction of an item's
    two sequences classified correctly}."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    items = _qa(items, "items", 2)
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= len(items):
        raise ValueError(f"folds: must be an int in [2, {len(items)}], got {folds!r}")
    for i, it in enumerate(items):
        if it.paraphrased_answer is None or not it.perturbed_answers:
            raise ValueError(f"items[{i}]: needs a paraphrased_answer and perturbed_answers")
    pairs = [(it.question, a) for it in items for a in (it.paraphrased_answer, it.perturbed_answers[0])]
    x = hidden_states(model, encode_items(tokenizer, pairs, template=template), pad_token_id=tokenizer.pad_token_id,
                      layer=layer, batch_size=batch_size)
    y = np.tile([1, 0], len(items))
    groups = np.repeat(np.arange(len(items)), 2)
    hits = np.zeros(len(y))
    for train, test in GroupKFold(n_splits=folds).split(x, y, groups):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        clf.fit(x[train], y[train])
        hits[test] = clf.predict(x[test]) == y[test]
    return {"accuracy": float(hits.mean()), "per_item": hits.reshape(-1, 2).mean(1).tolist()}


def in_context_reintroduction(model: torch.nn.Module, tokenizer, forget: Sequence[QAItem], *,
                              fraction: float = 0.5, n_context: int = 3, seed: int = 0,
                              template: QATemplate = QATemplate(), batch_size: int = 16) -> dict:
    """Put forgotten facts back into the prompt and see whether the others resurface.

    The forget items are split (seeded) into a context part (`fraction`) and a query part. Each
    query is prefixed with up to `n_context` context items about the same subject (others when
    the subject has none), rendered "Question: {q}\\nAnswer: {a}\\n\\n"; its answer probability
    is compared with and without that context.

    Returns {"before", "after", "recovery", "per_item_before", "per_item_after"}."""
    forget = _qa(forget, "forget", 2)
    _fraction(fraction)
    if isinstance(n_context, bool) or not isinstance(n_context, int) or n_context < 1:
        raise ValueError(f"n_context: must be an int >= 1, got {n_context!r}")
    context, queries = _split(forget, fraction, seed)
    before = answer_probability(model, tokenizer, queries, template=template, batch_size=batch_size)
    feats = []
    for q in queries:
        same = [c for c in context if c.subject and c.subject == q.subject]
        shots = (same + [c for c in context if c not in same])[:n_context]
        prefix = "".join(f"Question: {c.question}\nAnswer: {c.answer}\n\n" for c in shots)
        feats.append(encode_qa(tokenizer, q.question, q.answer, template=QATemplate(prefix + template.text)))
    after = answer_probability(model, tokenizer, feats, batch_size=batch_size)
    return _before_after(before, after)
