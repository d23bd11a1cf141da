"""`evaluate`: every metric of a suite in one call, gaps to Retrain, RTE, and a Markdown table.

Metric names (keys of the returned dict):
- classification: "UA", "RA", "TA" (percent), "MIA-Efficacy" (percent), "MIA-MemberRate" ([0, 1]),
  "ZRF" (with `random_model`), "Acc/<name>" for every `extra` set (percent).
- corrective: the classification metrics plus "Acc_corr", "Acc_retain" and, for BadNets, "ASR".
- regression: "MAE-retain", "MAE-forget", "MAE-test", "MIA-L1" ([0, 1]).
- with `reference`: "gap/<name>" = |metric − Retrain's| per shared metric, and "Avg.Gap" = mean
  over UA, RA, TA, MIA-Efficacy (classification suites; any suite with `gap_keys`).
- with `seconds`: "RTE-s", and "RTE-ratio" = seconds / Retrain's seconds when those are known.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from torch import nn
from torch.utils.data import DataLoader

from unlearnx.data.datasets import check_dataset
from unlearnx.data.scenarios import Scenario
from unlearnx.eval.classification import (
    accuracy_from_probs,
    attack_success_rate_from_probs,
    predict,
    zrf_from_probs,
)
from unlearnx.eval.mia import (
    member_rate_lr_from_features,
    member_rate_svc_from_features,
    mia_efficacy_from_features,
    softmax_entropy,
    true_label_confidence,
)
from unlearnx.eval.regression import l1_losses
from unlearnx.eval.tables import results_table

__all__ = ["AVG_GAP_KEYS", "SUITES", "avg_gap", "run_time_efficiency", "evaluate", "results_table"]

AVG_GAP_KEYS = ("UA", "RA", "TA", "MIA-Efficacy")
SUITES = ("classification", "corrective", "regression", "tofu", "muse", "wmdp", "rwku")
LLM_SUITES = ("tofu", "muse", "wmdp", "rwku")


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def avg_gap(metrics: Mapping[str, float], reference: Mapping[str, float], keys: Iterable[str] = AVG_GAP_KEYS) -> float:
    """Avg. Gap = (1/K) Σ_k |metrics[k] − reference[k]| over `keys` (SalUn; reference = Retrain)."""
    keys = tuple(keys)
    if not keys:
        raise ValueError("keys must name at least one metric")
    for k in keys:
        if k not in metrics:
            raise KeyError(f"metrics has no {k!r} (needed by keys)")
        if k not in reference:
            raise KeyError(f"reference has no {k!r} (needed by keys)")
    return sum(abs(_number(metrics[k], f"metrics[{k!r}]") - _number(reference[k], f"reference[{k!r}]"))
               for k in keys) / len(keys)


def run_time_efficiency(seconds: float, reference_seconds: float | None = None) -> dict[str, float]:
    """RTE: {"RTE-s": seconds} plus {"RTE-ratio": seconds / reference_seconds} (ratio to Retrain)."""
    seconds = _number(seconds, "seconds")
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    out = {"RTE-s": seconds}
    if reference_seconds is not None:
        reference_seconds = _number(reference_seconds, "reference_seconds")
        if reference_seconds <= 0:
            raise ValueError(f"reference_seconds must be > 0, got {reference_seconds}")
        out["RTE-ratio"] = seconds / reference_seconds
    return out


def _classification_metrics(model, forget, retain, test, extra, random_model, batch_size, device):
    def run(m, d):
        return predict(m, d, batch_size=batch_size, device=device)

    (pf, yf), (pr, yr), (pt, yt) = run(model, forget), run(model, retain), run(model, test)
    out = {
        "UA": 100.0 - accuracy_from_probs(pf, yf),
        "RA": accuracy_from_probs(pr, yr),
        "TA": accuracy_from_probs(pt, yt),
        "MIA-Efficacy": mia_efficacy_from_features(
            true_label_confidence(pr, yr), true_label_confidence(pf, yf), true_label_confidence(pt, yt)),
        "MIA-MemberRate": member_rate_lr_from_features(softmax_entropy(pr), softmax_entropy(pf), softmax_entropy(pt)),
    }
    if random_model is not None:
        out["ZRF"] = zrf_from_probs(pf, run(random_model, forget)[0])
    probs = {}
    for name, data in extra.items():
        probs[name] = run(model, data)
        out[f"Acc/{name}"] = accuracy_from_probs(*probs[name])
    return out, probs


def _corrective_metrics(probs, extra, test_probs, target_class):
    corrupted = "triggered_test" if "triggered_test" in extra else "confused_test" if "confused_test" in extra else None
    if corrupted is None:
        raise ValueError('the corrective suite needs extra["triggered_test"] (BadNets) or extra["confused_test"] '
                         "(interclass confusion); build the scenario with badnets_poison or interclass_confusion")
    out = {"Acc_corr": accuracy_from_probs(*probs[corrupted])}
    out["Acc_retain"] = accuracy_from_probs(*(probs["clean_test"] if "clean_test" in probs else test_probs))
    if corrupted == "triggered_test":
        if target_class is None:
            raise ValueError('target_class is required when extra has "triggered_test" (BadNets attack success rate)')
        out["ASR"] = attack_success_rate_from_probs(probs["triggered_test"][0], target_class)
    return out


def evaluate(
    model: nn.Module,
    *,
    suite: str = "classification",
    forget=None,
    retain=None,
    test=None,
    scenario: Scenario | None = None,
    reference: nn.Module | Mapping[str, float] | None = None,
    extra: Mapping[str, object] | None = None,
    seconds: float | None = None,
    reference_seconds: float | None = None,
    random_model: nn.Module | None = None,
    target_class: int | None = None,
    gap_keys: Iterable[str] | None = None,
    batch_size: int = 256,
    device=None,
    tokenizer=None,
    **llm_kwargs,
) -> dict[str, float]:
    """Evaluate `model` on a forget/retain/test split; return {metric name: float}.

    suite="tofu" | "muse" | "wmdp" | "rwku" evaluates a causal LM with `unlearnx.eval.llm.evaluate_llm`:
    `tokenizer` is required, forget/retain/reference are passed on when given, and the other
    keyword arguments are those of `evaluate_tofu` / `evaluate_muse` (held=, holdout=, forget_qa=,
    cache=...); the result is an `EvalResult` (a mapping of aggregates with per-item values).

    forget, retain, test: Datasets or DataLoaders of `(x, y)` (read in order), or take them
    from `scenario` (with its `extra` sets and, for BadNets, `meta["target_class"]`).
    reference: the Retrain model (evaluated here with the same arguments) or its metrics dict;
    adds "gap/<name>" and "Avg.Gap" (over `gap_keys`, default UA, RA, TA, MIA-Efficacy for the
    classification suites). seconds / reference_seconds: wall time of the unlearning procedure
    and of Retrain (taken from a reference dict's "RTE-s" when not given).
    random_model: a randomly initialised model of the same architecture, for "ZRF".
    Deterministic on CPU: the attacks are SVC / LogisticRegression(random_state=0) fits.
    See the module docstring for the metric names per suite.
    """
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    if suite in LLM_SUITES:
        from unlearnx.eval.llm import evaluate_llm

        given = {k: v for k, v in (("forget", forget), ("retain", retain), ("reference", reference)) if v is not None}
        return evaluate_llm(model, suite=suite, tokenizer=tokenizer, **given, **llm_kwargs)
    if llm_kwargs or tokenizer is not None:
        unknown = sorted(llm_kwargs) + (["tokenizer"] if tokenizer is not None else [])
        raise TypeError(f"evaluate() got unexpected keyword arguments for suite {suite!r}: {', '.join(unknown)}")
    if scenario is not None:
        if not isinstance(scenario, Scenario):
            raise TypeError(f"scenario must be a unlearnx.data.Scenario, got {type(scenario).__name__}")
        if any(v is not None for v in (forget, retain, test)):
            raise ValueError("give either scenario or forget/retain/test, not both")
        forget, retain, test = scenario.forget, scenario.retain, scenario.test
        extra = {**scenario.extra, **(extra or {})}
        if target_class is None:
            target_class = scenario.meta.get("target_class")
    for name, data in (("forget", forget), ("retain", retain), ("test", test)):
        if data is None:
            raise ValueError(f"{name} is required (or pass scenario)")
        if not isinstance(data, DataLoader):
            check_dataset(data, name)
    extra = dict(extra or {})
    for name, data in extra.items():
        check_dataset(data, f"extra[{name!r}]")

    if suite == "regression":
        splits = {"retain": retain, "forget": forget, "test": test}
        losses = {k: l1_losses(model, d, batch_size=batch_size, device=device) for k, d in splits.items()}
        metrics = {f"MAE-{k}": float(v.mean()) for k, v in losses.items()}
        metrics["MIA-L1"] = member_rate_svc_from_features(losses["retain"], losses["forget"], losses["test"])
    else:
        metrics, probs = _classification_metrics(model, forget, retain, test, extra, random_model, batch_size, device)
        if suite == "corrective":
            test_probs = None if "clean_test" in probs else predict(model, test, batch_size=batch_size, device=device)
            metrics.update(_corrective_metrics(probs, extra, test_probs, target_class))
            for name in ("triggered_test", "confused_test", "clean_test"):
                metrics.pop(f"Acc/{name}", None)  # already reported as Acc_corr / Acc_retain

    if reference is not None:
        if isinstance(reference, nn.Module):
            reference = evaluate(reference, suite=suite, forget=forget, retain=retain, test=test, extra=extra,
                                 random_model=random_model, target_class=target_class, batch_size=batch_size,
                                 device=device)
        elif not isinstance(reference, Mapping):
            raise TypeError(f"reference must be the Retrain model or its metrics dict, got {type(reference).__name__}")
        for k, v in list(metrics.items()):
            if k in reference and not k.startswith(("gap/", "RTE-", "Avg.Gap")):
                metrics[f"gap/{k}"] = abs(v - _number(reference[k], f"reference[{k!r}]"))
        keys = tuple(gap_keys) if gap_keys is not None else AVG_GAP_KEYS if suite != "regression" else None
        if keys:
            metrics["Avg.Gap"] = avg_gap(metrics, reference, keys)
        if reference_seconds is None and "RTE-s" in reference:
            reference_seconds = reference["RTE-s"]
    if seconds is not None:
        metrics.update(run_time_efficiency(seconds, reference_seconds))
    return metrics
