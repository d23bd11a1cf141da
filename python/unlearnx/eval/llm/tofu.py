"""TOFU metrics (Maini et al., 2024, "TOFU: A Task of Fictitious Unlearning for LLMs").

Per item (answer tokens scored teacher-forced, see `unlearnx.eval.llm.scoring`):

    probability            p = exp(-avgNLL(answer))  (geometric mean of the token probabilities);
                           on the held sets normalized over the options,
                           p_true / (p_true + sum_j p_perturbed_j)
    ROUGE-L recall         of the greedy answer (200 new tokens) vs the true answer, stemmed
    truth ratio            R = P(wrong) / P(right) = exp(avgNLL(base) - mean_j avgNLL(perturbed_j)),
                           base = the paraphrased answer (the true answer when an item has none,
                           as on TOFU's held sets); P(wrong) is the geometric mean over the
                           perturbed answers. Aggregated as mean min(R, 1/R) on the forget set and
                           mean max(0, 1 - R) elsewhere.
    extraction strength    1 - k*/|y|, k* the shortest answer prefix after which the teacher-forced
                           argmax reproduces every remaining token (Carlini et al., 2021)
    exact memorization     mean_t 1[argmax = y_t] (Tirumala et al., 2022)

Set level: forget quality = p-value of scipy's two-sample KS test between the per-item R of
the evaluated model and of the retain (oracle) model on the forget set; model utility = the
harmonic mean of {probability, ROUGE-L recall, truth ratio} on the retain set and each held set
(TOFU: real authors and world facts, 9 numbers).

Note on R's direction: docs/metrics.md writes R = exp(mean_j avgNLL(perturbed_j) -
avgNLL(paraphrased)) and also R = P(wrong)/P(right); the two disagree in sign. TOFU's code
aggregates its exp(perturbed - paraphrased) ratio as max(0, 1 - 1/ratio), i.e. max(0, 1 - R)
with R = P(wrong)/P(right), which is what is implemented here (and what open-unlearning stores).
Forget quality does not depend on the direction (the KS test is invariant when both samples are
inverted).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from unlearnx.data.lm_batches import QATemplate
from unlearnx.data.text import QAItem
from unlearnx.eval.llm.generation import greedy_generate, rouge_l
from unlearnx.eval.llm.results import EvalResult, MetricCache, fingerprint_model, fingerprint_tokenizer
from unlearnx.eval.llm.scoring import encode_items, score_tokens

__all__ = [
    "fact_recall",
    "probability",
    "normalized_probability",
    "truth_ratio",
    "truth_ratio_score",
    "forget_quality",
    "model_utility",
    "extraction_strength",
    "exact_memorization",
    "tofu_split_metrics",
    "tofu_generation_rouge",
    "evaluate_tofu",
]


def _array(value, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64)
    if a.ndim != ndim or a.size == 0:
        raise ValueError(f"{name}: expected a non-empty {ndim}-D array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return a


def probability(mean_nll) -> np.ndarray:
    """[N] p = exp(-avgNLL): the geometric mean of the answer's token probabilities."""
    return np.exp(-_array(mean_nll, "mean_nll", 1))


def normalized_probability(nll_true, nll_perturbed) -> np.ndarray:
    """[N] p_true / (p_true + sum_j p_perturbed_j), nll_true [N], nll_perturbed [N, P] (avg NLLs).

    Computed as a softmax over -avgNLL, which is the same ratio without underflow."""
    t = _array(nll_true, "nll_true", 1)
    p = _array(nll_perturbed, "nll_perturbed", 2)
    if p.shape[0] != t.shape[0]:
        raise ValueError(f"nll_perturbed: {p.shape[0]} rows for {t.shape[0]} items")
    logits = -np.concatenate([t[:, None], p], axis=1)
    logits -= logits.max(1, keepdims=True)
    e = np.exp(logits)
    return e[:, 0] / e.sum(1)


def truth_ratio(nll_base, nll_perturbed) -> np.ndarray:
    """[N] R = exp(avgNLL(base) - mean_j avgNLL(perturbed_j)) = P(wrong)/P(right).

    nll_base [N] (paraphrased answer), nll_perturbed [N, P]."""
    b = _array(nll_base, "nll_base", 1)
    p = _array(nll_perturbed, "nll_perturbed", 2)
    if p.shape[0] != b.shape[0]:
        raise ValueError(f"nll_perturbed: {p.shape[0]} rows for {b.shape[0]} items")
    return np.exp(b - p.mean(1))


def truth_ratio_score(ratios, *, forget: bool) -> float:
    """TOFU aggregation of R: mean min(R, 1/R) on the forget set (1 = no preference, as a model
    that never saw the facts), mean max(0, 1 - R) on the others (1 = the true answer wins)."""
    r = _array(ratios, "ratios", 1)
    if (r <= 0).any():
        raise ValueError("ratios: must be > 0")
    return float(np.minimum(r, 1 / r).mean() if forget else np.maximum(0.0, 1 - r).mean())


def forget_quality(ratios, retain_ratios) -> float:
    """p-value of scipy.stats.ks_2samp(ratios, retain_ratios): per-item forget-set truth ratios of
    the evaluated model vs the retain (oracle) model. 1.0 for identical samples."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(_array(ratios, "ratios", 1), _array(retain_ratios, "retain_ratios", 1)).pvalue)


def model_utility(values: Mapping[str, float] | Sequence[float]) -> float:
    """Harmonic mean n / sum(1/v) of the utility numbers (TOFU: 9, all in [0, 1]); 0 if any is 0."""
    vals = list(values.values()) if isinstance(values, Mapping) else list(values)
    a = _array(vals, "values", 1)
    if (a < 0).any():
        raise ValueError("values: must be >= 0")
    if (a == 0).any():
        return 0.0
    return float(a.size / (1 / a).sum())


def extraction_strength(correct: Sequence[np.ndarray]) -> np.ndarray:
    """[N] 1 - k*/|y| from per-item teacher-forced argmax hits `correct` (bool [n_i]).

    The argmax at a position does not depend on k (the true prefix is always fed), so
    k* = 1 + the index of the last miss (0 when every token is reproduced, |y| when the last is
    missed: then nothing is extracted, ES = 0)."""
    out = []
    for i, c in enumerate(correct):
        c = np.asarray(c, dtype=bool)
        if c.ndim != 1 or c.size == 0:
            raise ValueError(f"correct[{i}]: expected a non-empty 1-D bool array")
        misses = np.flatnonzero(~c)
        k_star = 0 if misses.size == 0 else misses[-1] + 1
        out.append(1.0 - k_star / c.size)
    return np.array(out)


def exact_memorization(correct: Sequence[np.ndarray]) -> np.ndarray:
    """[N] fraction of answer tokens whose teacher-forced argmax is the true token."""
    out = []
    for i, c in enumerate(correct):
        c = np.asarray(c, dtype=bool)
        if c.ndim != 1 or c.size == 0:
            raise ValueError(f"correct[{i}]: expected a non-empty 1-D bool array")
        out.append(float(c.mean()))
    return np.array(out)


_KINDS = ("forget", "retain", "held")


def _check_items(items, name: str) -> list[QAItem]:
    if isinstance(items, (str, QAItem)) or not isinstance(items, Sequence) or not items:
        raise ValueError(f"{name}: expected a non-empty sequence of QAItem")
    counts = set()
    for i, it in enumerate(items):
        if not isinstance(it, QAItem):
            raise TypeError(f"{name}[{i}]: expected a QAItem, got {type(it).__name__}")
        if not it.perturbed_answers:
            raise ValueError(f"{name}[{i}]: needs perturbed_answers for the truth ratio ({it.question!r})")
        counts.add(len(it.perturbed_answers))
    if len(counts) != 1:
        raise ValueError(f"{name}: every item needs the same number of perturbed answers, got {sorted(counts)}")
    return list(items)


def _split_config(template, batch_size) -> dict:
    return {"template": template.text, "batch_size": batch_size}


def tofu_split_metrics(model: torch.nn.Module, tokenizer, items: Sequence[QAItem], *, kind: str,
                       template: QATemplate = QATemplate(), batch_size: int = 32, cache: MetricCache | None = None,
                       progress: bool = False) -> dict[str, list[float]]:
    """Teacher-forced TOFU per-item values of one split (no generation).

    kind: "forget" | "retain" | "held" (held: probability normalized over the options).
    Returns {"probability", "truth_ratio_raw" (R), "extraction_strength", "exact_memorization"}:
    lists of N floats. Cached (when `cache` is given) under model weights + items + settings.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind: must be one of {_KINDS}, got {kind!r}")
    items = _check_items(items, "items")

    def compute():
        pad = tokenizer.pad_token_id
        p = len(items[0].perturbed_answers)

        def nll(pairs):
            feats = encode_items(tokenizer, pairs, template=template)
            return score_tokens(model, feats, pad_token_id=pad, batch_size=batch_size, progress=progress)

        answer = nll([(it.question, it.answer) for it in items])
        base = nll([(it.question, it.paraphrased_answer if it.paraphrased_answer is not None else it.answer)
                    for it in items]).mean_nll()
        pert = nll([(it.question, a) for it in items for a in it.perturbed_answers]).mean_nll().reshape(len(items), p)
        prob = (normalized_probability(answer.mean_nll(), pert) if kind == "held"
                else probability(answer.mean_nll()))
        return {"probability": prob, "truth_ratio_raw": truth_ratio(base, pert),
                "extraction_strength": extraction_strength(answer.correct),
                "exact_memorization": exact_memorization(answer.correct)}

    if cache is None:
        return {k: v.tolist() for k, v in compute().items()}
    key = cache.key(model=model, data=items, config={"metric": "tofu_split", "kind": kind,
                                                     "tokenizer": fingerprint_tokenizer(tokenizer),
                                                     **_split_config(template, batch_size)})
    return cache.get_or_compute(key, compute)


def tofu_generation_rouge(model: torch.nn.Module, tokenizer, items: Sequence[QAItem], *,
                          template: QATemplate = QATemplate(), max_new_tokens: int = 200, batch_size: int = 32,
                          cache: MetricCache | None = None, progress: bool = False) -> dict[str, list]:
    """Greedy answers and their ROUGE-L recall (stemmed) vs the true answers.

    Returns {"generation": [str], "rouge_l_recall": [float]}; cached like `tofu_split_metrics`."""
    if isinstance(items, (str, QAItem)) or not isinstance(items, Sequence) or not items:
        raise ValueError("items: expected a non-empty sequence of QAItem")

    def compute():
        gens = [g.strip() for g in greedy_generate(model, tokenizer, [template.prompt(it.question) for it in items],
                                                   max_new_tokens=max_new_tokens, batch_size=batch_size,
                                                   progress=progress)]
        return {"generation": gens,
                "rouge_l_recall": rouge_l(gens, [it.answer for it in items], use_stemmer=True, kind="recall")}

    if cache is None:
        return compute()
    key = cache.key(model=model, data=list(items), config={
        "metric": "tofu_rouge", "max_new_tokens": max_new_tokens, "tokenizer": fingerprint_tokenizer(tokenizer),
        **_split_config(template, batch_size)})
    return cache.get_or_compute(key, compute)


def fact_recall(generations: Sequence[str], items: Sequence[QAItem]) -> list[float]:
    """[N] 1.0 where the greedy answer states the item's true fact (QAItem.value, case-insensitive
    substring), else 0.0. Not a TOFU metric: unlearnx reports it where every item's value is known
    (the built-in authors), because ROUGE-L recall cannot tell a changed fact from a kept one (one
    token of a sentence)."""
    if len(generations) != len(items):
        raise ValueError(f"generations: {len(generations)} for {len(items)} items")
    if not all(it.value for it in items):
        raise ValueError("items: every item needs its fact (QAItem.value)")
    return [float(it.value.lower() in g.lower()) for g, it in zip(generations, items)]


def _reference_ratios(reference, tokenizer, forget, template, batch_size, cache, progress) -> np.ndarray:
    if isinstance(reference, torch.nn.Module):
        return np.asarray(tofu_split_metrics(reference, tokenizer, forget, kind="forget", template=template,
                                             batch_size=batch_size, cache=cache, progress=progress)["truth_ratio_raw"])
    if isinstance(reference, EvalResult):
        if "forget/truth_ratio_raw" not in reference.per_item:
            raise ValueError("reference: EvalResult has no per_item['forget/truth_ratio_raw'] (a TOFU result)")
        return np.asarray(reference.per_item["forget/truth_ratio_raw"], dtype=np.float64)
    return _array(reference, "reference", 1)


def evaluate_tofu(model: torch.nn.Module, tokenizer, *, forget: Sequence[QAItem], retain: Sequence[QAItem],
                  held: Mapping[str, Sequence[QAItem]], reference=None, template: QATemplate = QATemplate(),
                  max_new_tokens: int = 200, batch_size: int = 32, cache: MetricCache | None = None,
                  progress: bool = False) -> EvalResult:
    """The TOFU suite on one model.

    Args:
        forget, retain: QAItems with paraphrased and perturbed answers (e.g. AuthorsQA
            "forget10" / "retain90").
        held: the sets that stand for general knowledge, {name: items} (TOFU: "real_authors",
            "world_facts"); at least one.
        reference: the retain (oracle) model, its TOFU EvalResult, or its per-item forget-set
            truth ratios; adds "forget_quality".
        max_new_tokens: greedy answer length for ROUGE (TOFU: 200).
        cache: reuse metric values computed before for the same weights, data and settings.
    Returns:
        EvalResult with aggregate "<split>/probability", "<split>/rouge_l_recall",
        "<split>/truth_ratio", "<split>/extraction_strength", "<split>/exact_memorization" for
        split in forget, retain and each held name, "model_utility" and, with a reference,
        "forget_quality"; per_item holds the per-item values (and "<split>/truth_ratio_raw" = R,
        "<split>/generation"). Where every item of a split has its fact (QAItem.value), also
        "<split>/fact_recall" (`fact_recall`; unlearnx's addition, not part of model utility).
    """
    if not isinstance(held, Mapping) or not held:
        raise ValueError("held: expected a non-empty mapping {name: items} (TOFU: real_authors, world_facts)")
    for name in held:
        if name in ("forget", "retain") or not isinstance(name, str) or "/" in name:
            raise ValueError(f"held: invalid set name {name!r}")
    splits = {"forget": ("forget", forget), "retain": ("retain", retain),
              **{name: ("held", items) for name, items in held.items()}}
    aggregate: dict[str, float] = {}
    per_item: dict[str, list] = {}
    utility: dict[str, float] = {}
    for name, (kind, items) in splits.items():
        items = _check_items(items, name)
        vals = tofu_split_metrics(model, tokenizer, items, kind=kind, template=template, batch_size=batch_size,
                                  cache=cache, progress=progress)
        gen = tofu_generation_rouge(model, tokenizer, items, template=template, max_new_tokens=max_new_tokens,
                                    batch_size=batch_size, cache=cache, progress=progress)
        for key in ("probability", "extraction_strength", "exact_memorization", "truth_ratio_raw"):
            per_item[f"{name}/{key}"] = vals[key]
        per_item[f"{name}/rouge_l_recall"] = gen["rouge_l_recall"]
        per_item[f"{name}/generation"] = gen["generation"]
        aggregate[f"{name}/probability"] = float(np.mean(vals["probability"]))
        aggregate[f"{name}/rouge_l_recall"] = float(np.mean(gen["rouge_l_recall"]))
        aggregate[f"{name}/truth_ratio"] = truth_ratio_score(vals["truth_ratio_raw"], forget=kind == "forget")
        aggregate[f"{name}/extraction_strength"] = float(np.mean(vals["extraction_strength"]))
        aggregate[f"{name}/exact_memorization"] = float(np.mean(vals["exact_memorization"]))
        if all(it.value for it in items):  # built-in data: every answer states a known bare fact
            per_item[f"{name}/fact_recall"] = fact_recall(gen["generation"], items)
            aggregate[f"{name}/fact_recall"] = float(np.mean(per_item[f"{name}/fact_recall"]))
        if kind != "forget":
            for key in ("probability", "rouge_l_recall", "truth_ratio"):
                utility[f"{name}/{key}"] = aggregate[f"{name}/{key}"]
    aggregate["model_utility"] = model_utility(utility)
    if reference is not None:
        ref = _reference_ratios(reference, tokenizer, forget, template, batch_size, cache, progress)
        aggregate["forget_quality"] = forget_quality(per_item["forget/truth_ratio_raw"], ref)
    config = {"template": template.text, "max_new_tokens": max_new_tokens, "held": list(held),
              "model": fingerprint_model(model), "tokenizer": fingerprint_tokenizer(tokenizer),
              "utility_terms": list(utility)}
    return EvalResult(suite="tofu", aggregate=aggregate, per_item=per_item, config=config)
