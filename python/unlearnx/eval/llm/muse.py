"""MUSE metrics (Shi et al., 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models").

    VerbMem      ROUGE-L F1 (no stemmer) between the greedy continuation (128 tokens) of each
                 forget text's first `prefix_tokens` tokens and the true next 128 tokens, x100
    KnowMem      ROUGE-L F1 (no stemmer) of greedy answers (32 tokens, stop at "\\n\\n",
                 "\\nQuestion", "Question:") to questions asked after few-shot examples
                 "Question: {q}\\nAnswer: {a}\\n\\n" then "Question: {q}\\nAnswer: " (MUSE's
                 trailing space), x100; on forget QA (lower is better) and
                 retain QA (utility, higher is better)
    PrivLeak     (AUC_unlearned - AUC_retrain) / AUC_retrain x 100 with MUSE's AUC of the Min-K%
                 (k = 0.4) attack on forget vs holdout texts, each scored as tokenizer(text) with
                 no <eos> appended (as MUSE's code does); good band [-5, 5]

MUSE's AUC (its `sweep`: forget labelled 0, holdout 1, ROC of -score) equals 1 - `mia_auc`
(the attack AUC of `unlearnx.eval.llm.mia`, forget 0 / holdout 1 on "higher = less likely
member" scores). With it, a model that still memorizes the forget set gets PrivLeak near -100
(under-unlearning, MUSE's target row: -99.8) and one that pushed the forget set below unseen
data gets a positive PrivLeak (over-unlearning). docs/metrics.md's words "AUC forget (0) vs
holdout (1)" applied to higher-is-less-member scores would flip that sign; this module follows
MUSE's numbers.

Scalability (the forget set grows x1..x4) and sustainability (4 sequential requests) are
runners around a user-supplied unlearning function and evaluation function.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from unlearnx.data.text import QAItem
from unlearnx.eval.llm.generation import greedy_generate, rouge_l
from unlearnx.eval.llm.mia import mia_auc, min_k_scores
from unlearnx.eval.llm.results import EvalResult, MetricCache, fingerprint_model, fingerprint_tokenizer
from unlearnx.eval.llm.scoring import encode_items, score_tokens

__all__ = [
    "KNOWMEM_STOP_STRINGS",
    "knowmem_prompt",
    "verbmem",
    "knowmem",
    "muse_auc",
    "privleak",
    "evaluate_muse",
    "scalability",
    "sustainability",
    "nested_forget_sets",
]

KNOWMEM_STOP_STRINGS = ("\n\n", "\nQuestion", "Question:")


def _texts(texts, name: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise ValueError(f"{name}: expected a non-empty sequence of str")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}]: expected str, got {type(t).__name__}")
    return list(texts)


def _qa(items, name: str) -> list[QAItem]:
    if isinstance(items, (str, QAItem)) or not isinstance(items, Sequence) or not items:
        raise ValueError(f"{name}: expected a non-empty sequence of QAItem")
    for i, it in enumerate(items):
        if not isinstance(it, QAItem):
            raise TypeError(f"{name}[{i}]: expected a QAItem, got {type(it).__name__}")
    return list(items)


def knowmem_prompt(question: str, shots: Sequence[QAItem], *, trailing_space: bool = True) -> str:
    """MUSE's few-shot QA prompt: "Question: {q}\\nAnswer: {a}\\n\\n" per shot, then
    "Question: {question}\\nAnswer: " -- with MUSE's trailing space after "Answer:", which changes
    the greedy answers; `trailing_space=False` gives the variant without it."""
    if not isinstance(trailing_space, bool):
        raise TypeError(f"trailing_space: must be a bool, got {type(trailing_space).__name__}")
    end = "Answer: " if trailing_space else "Answer:"
    return "".join(f"Question: {s.question}\nAnswer: {s.answer}\n\n" for s in shots) + f"Question: {question}\n{end}"


def _cached(cache, model, tokenizer, data, config, compute):
    if cache is None:
        return compute()
    key = cache.key(model=model, data=data, config={**config, "tokenizer": fingerprint_tokenizer(tokenizer)})
    return cache.get_or_compute(key, compute)


def verbmem(model: torch.nn.Module, tokenizer, texts: Sequence[str] | Sequence[QAItem], *, prefix_tokens: int = 32,
            max_new_tokens: int = 128, batch_size: int = 16, cache: MetricCache | None = None,
            progress: bool = False) -> dict[str, list]:
    """Per-text VerbMem: ROUGE-L F1 (x100, no stemmer) of the greedy continuation of a prompt vs
    the true continuation.

    `texts` are plain texts (prompt = the first `prefix_tokens` tokens, truth = the next
    `max_new_tokens` tokens, decoded) or MUSE's verbmem/forget.json pairs as QAItem(question=prompt,
    answer=gt) (`unlearnx.data.benchmarks.load_muse(path, "verbmem", "forget")`), used as given.
    Returns {"rouge_l_f1": [N] in [0, 100], "generation": [N], "truth": [N]}. Plain texts shorter
    than prefix_tokens + 1 tokens raise."""
    pairs = isinstance(texts, Sequence) and not isinstance(texts, str) and bool(texts) and all(
        isinstance(t, QAItem) for t in texts)
    texts = list(texts) if pairs else _texts(texts, "texts")
    for name, v in (("prefix_tokens", prefix_tokens), ("max_new_tokens", max_new_tokens)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: must be an int >= 1, got {v!r}")

    def compute():
        prompts, truths = [], []
        for i, t in enumerate(texts):
            if pairs:
                prompts.append(t.question)
                truths.append(t.answer)
                continue
            ids = tokenizer(t, add_special_tokens=False)["input_ids"]
            if len(ids) <= prefix_tokens:
                raise ValueError(f"texts[{i}]: {len(ids)} tokens, needs more than prefix_tokens={prefix_tokens}")
            prompts.append(tokenizer.decode(ids[:prefix_tokens]))
            truths.append(tokenizer.decode(ids[prefix_tokens:prefix_tokens + max_new_tokens]))
        gens = greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               progress=progress)
        scores = [100 * s for s in rouge_l(gens, truths, use_stemmer=False, kind="fmeasure")]
        return {"rouge_l_f1": scores, "generation": gens, "truth": truths}

    return _cached(cache, model, tokenizer, texts, {"metric": "verbmem", "prefix_tokens": prefix_tokens,
                                                    "max_new_tokens": max_new_tokens}, compute)


def knowmem(model: torch.nn.Module, tokenizer, items: Sequence[QAItem], *, shots: Sequence[QAItem],
            max_new_tokens: int = 32, batch_size: int = 32, cache: MetricCache | None = None,
            progress: bool = False, trailing_space: bool = True) -> dict[str, list]:
    """Per-question KnowMem: ROUGE-L F1 (x100, no stemmer) of the greedy answer after the
    few-shot prompt (`knowmem_prompt`), stopped at KNOWMEM_STOP_STRINGS, vs the true answer.

    Returns {"rouge_l_f1": [N], "generation": [N]}."""
    items = _qa(items, "items")
    shots = list(shots)
    if any(not isinstance(s, QAItem) for s in shots):
        raise TypeError("shots: expected a sequence of QAItem")

    def compute():
        prompts = [knowmem_prompt(it.question, shots, trailing_space=trailing_space) for it in items]
        gens = [g.strip() for g in greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                                   stop_strings=KNOWMEM_STOP_STRINGS, batch_size=batch_size,
                                                   progress=progress)]
        scores = [100 * s for s in rouge_l(gens, [it.answer for it in items], use_stemmer=False, kind="fmeasure")]
        return {"rouge_l_f1": scores, "generation": gens}

    return _cached(cache, model, tokenizer, {"items": items, "shots": shots},
                   {"metric": "knowmem", "max_new_tokens": max_new_tokens,
                                                                  "trailing_space": trailing_space}, compute)


def muse_auc(forget_scores, holdout_scores) -> float:
    """MUSE's AUC: ROC of -score with forget labelled 0 and holdout 1, = 1 - mia_auc(...)."""
    return 1.0 - mia_auc(forget_scores, holdout_scores)


def privleak(auc_unlearned: float, auc_retrain: float) -> float:
    """(AUC_unlearned - AUC_retrain) / AUC_retrain x 100, both MUSE AUCs (`muse_auc`)."""
    for name, v in (("auc_unlearned", auc_unlearned), ("auc_retrain", auc_retrain)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ValueError(f"{name}: must be an AUC in [0, 1], got {v!r}")
    if auc_retrain == 0:
        raise ValueError("auc_retrain: is 0; PrivLeak is undefined")
    return (auc_unlearned - auc_retrain) / auc_retrain * 100


def _min_k(model, tokenizer, forget, holdout, k, batch_size, cache, progress) -> dict[str, list]:
    def compute():
        out = {}
        for name, items in (("forget", forget), ("holdout", holdout)):
            s = score_tokens(model, encode_items(tokenizer, items), pad_token_id=tokenizer.pad_token_id,
                             batch_size=batch_size, progress=progress)
            out[name] = min_k_scores(s, k=k)
        return out

    return _cached(cache, model, tokenizer, {"forget": list(forget), "holdout": list(holdout)},
                   {"metric": "min_k", "k": k}, compute)


def evaluate_muse(model: torch.nn.Module, tokenizer, *, forget: Sequence, holdout: Sequence,
                  forget_qa: Sequence[QAItem] | None = None, retain_qa: Sequence[QAItem] | None = None,
                  verbmem_texts: Sequence[str] | None = None, shots: Sequence[QAItem] | None = None,
                  n_shots: int = 3, reference=None, k: float = 0.4, prefix_tokens: int = 32,
                  verbmem_tokens: int = 128, knowmem_tokens: int = 32, batch_size: int = 16,
                  cache: MetricCache | None = None, progress: bool = False,
                  knowmem_trailing_space: bool = True) -> EvalResult:
    """The MUSE suite on one model.

    Args:
        forget, holdout: member / non-member items for PrivLeak's Min-K% attack (plain texts,
            or QAItems scored on their answers).
        forget_qa, retain_qa: QA for KnowMem (optional).
        verbmem_texts: forget texts for VerbMem, or MUSE's verbmem (prompt, gt) pairs as QAItems;
            default: `forget` when it holds plain texts.
        shots: few-shot examples for KnowMem; default: the first `n_shots` retain_qa items (and
            those are then left out of the retain KnowMem score).
        reference: the retrain model, its MUSE EvalResult, or its MUSE AUC (float); adds "privleak".
        knowmem_trailing_space: KnowMem prompts end with "Answer: " as MUSE's do (False: "Answer:").
    Returns:
        EvalResult with aggregate "verbmem_forget", "knowmem_forget", "knowmem_retain" (x100),
        "mink_auc" (MUSE AUC) and "privleak"; per-item values under the same names.
    """
    forget, holdout = list(forget), list(holdout)
    if not forget or not holdout:
        raise ValueError("forget, holdout: both must be non-empty")
    if verbmem_texts is None and all(isinstance(t, str) for t in forget):
        verbmem_texts = forget
    retain_qa = None if retain_qa is None else _qa(retain_qa, "retain_qa")
    if shots is None:
        if retain_qa is None and forget_qa is not None:
            raise ValueError("shots: give shots or retain_qa (the default shots are its first n_shots items)")
        shots, retain_qa = (retain_qa[:n_shots], retain_qa[n_shots:]) if retain_qa is not None else ([], None)
        if retain_qa is not None and not retain_qa:
            raise ValueError(f"retain_qa: needs more than n_shots={n_shots} items")
    aggregate: dict[str, float] = {}
    per_item: dict[str, list] = {}
    if verbmem_texts is not None:
        v = verbmem(model, tokenizer, verbmem_texts, prefix_tokens=prefix_tokens, max_new_tokens=verbmem_tokens,
                    batch_size=batch_size, cache=cache, progress=progress)
        per_item["verbmem_forget"], per_item["verbmem_forget/generation"] = v["rouge_l_f1"], v["generation"]
        aggregate["verbmem_forget"] = float(np.mean(v["rouge_l_f1"]))
    for name, qa in (("knowmem_forget", forget_qa), ("knowmem_retain", retain_qa)):
        if qa is not None:
            r = knowmem(model, tokenizer, _qa(qa, name), shots=shots, max_new_tokens=knowmem_tokens,
                        batch_size=batch_size, cache=cache, progress=progress,
                        trailing_space=knowmem_trailing_space)
            per_item[name], per_item[f"{name}/generation"] = r["rouge_l_f1"], r["generation"]
            aggregate[name] = float(np.mean(r["rouge_l_f1"]))
    scores = _min_k(model, tokenizer, forget, holdout, k, batch_size, cache, progress)
    per_item["mink/forget"], per_item["mink/holdout"] = scores["forget"], scores["holdout"]
    aggregate["mink_auc"] = muse_auc(scores["forget"], scores["holdout"])
    if reference is not None:
        if isinstance(reference, torch.nn.Module):
            ref = _min_k(reference, tokenizer, forget, holdout, k, batch_size, cache, progress)
            ref_auc = muse_auc(ref["forget"], ref["holdout"])
        elif isinstance(reference, Mapping):
            if "mink_auc" not in reference:
                raise ValueError("reference: metrics have no 'mink_auc' (a MUSE result)")
            ref_auc = float(reference["mink_auc"])
        else:
            ref_auc = reference
        aggregate["privleak"] = privleak(aggregate["mink_auc"], ref_auc)
    config = {"k": k, "prefix_tokens": prefix_tokens, "verbmem_tokens": verbmem_tokens,
              "knowmem_tokens": knowmem_tokens, "knowmem_trailing_space": knowmem_trailing_space,
              "n_shots": len(shots), "model": fingerprint_model(model),
              "tokenizer": fingerprint_tokenizer(tokenizer)}
    return EvalResult(suite="muse", aggregate=aggregate, per_item=per_item, config=config)


def _check_runner(unlearn_fn, evaluate_fn, requests, name: str) -> list:
    if not callable(unlearn_fn) or not callable(evaluate_fn):
        raise TypeError("unlearn_fn, evaluate_fn: must be callables")
    if isinstance(requests, (str, bytes)) or not isinstance(requests, Sequence) or not requests:
        raise ValueError(f"{name}: expected a non-empty sequence of forget sets")
    return list(requests)


def scalability(model: torch.nn.Module, unlearn_fn: Callable, evaluate_fn: Callable,
                forget_sets: Sequence[Sequence]) -> list[Mapping[str, float]]:
    """MUSE scalability: unlearn a fresh copy of `model` with each forget set (MUSE: nested sets
    of size x1..x4, see `nested_forget_sets`) and evaluate it.

    unlearn_fn(model_copy, forget_set) -> unlearned model; evaluate_fn(model, forget_set) ->
    metrics (e.g. an EvalResult). Returns one result per forget set, in order."""
    forget_sets = _check_runner(unlearn_fn, evaluate_fn, forget_sets, "forget_sets")
    return [evaluate_fn(unlearn_fn(copy.deepcopy(model), fs), fs) for fs in forget_sets]


def sustainability(model: torch.nn.Module, unlearn_fn: Callable, evaluate_fn: Callable,
                   requests: Sequence[Sequence]) -> list[Mapping[str, float]]:
    """MUSE sustainability: apply the unlearning requests one after another to the same model
    (a copy of `model`; MUSE: 4 requests) and evaluate after each.

    evaluate_fn(model, forget_so_far) gets the union of the requests served so far."""
    requests = _check_runner(unlearn_fn, evaluate_fn, requests, "requests")
    current = copy.deepcopy(model)
    served: list = []
    out = []
    for req in requests:
        current = unlearn_fn(current, req)
        served = served + list(req)
        out.append(evaluate_fn(current, served))
    return out


def nested_forget_sets(items: Sequence, n: int = 4) -> list[list]:
    """MUSE's scalability sets: the first 1/n, 2/n, ..., n/n of `items` (each contains the last)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or len(items) < n:
        raise ValueError(f"n: must be an int in [1, len(items)={len(items)}], got {n!r}")
    return [list(items[: round(len(items) * (i + 1) / n)]) for i in range(n)]

