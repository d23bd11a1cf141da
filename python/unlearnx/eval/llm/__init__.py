"""unlearnx.eval.llm: the language-model evaluation suites (TOFU, MUSE), membership-inference
attacks, robustness probes, fast greedy generation and cached, per-item results.

    from unlearnx.eval.llm import evaluate_llm, MetricCache
    res = evaluate_llm(model, suite="tofu", tokenizer=tok, forget=qa["forget10"], retain=qa["retain90"],
                       held={"real_authors": qa["real_authors"], "world_facts": qa["world_facts"]},
                       reference=retain_model, cache=MetricCache("eval-cache"))
    res["forget_quality"], res["model_utility"], res.per_item["forget/truth_ratio_raw"]
"""
from __future__ import annotations

from unlearnx.eval.llm.generation import cut_at_stop, greedy_generate, rouge_l
from unlearnx.eval.llm.mia import (
    MIA_ATTACKS,
    gradnorm_scores,
    loss_scores,
    mia_attacks,
    mia_auc,
    min_k_plus_plus_scores,
    min_k_scores,
    reference_scores,
    zlib_scores,
)
from unlearnx.eval.llm.muse import (
    KNOWMEM_STOP_STRINGS,
    evaluate_muse,
    knowmem,
    knowmem_prompt,
    muse_auc,
    nested_forget_sets,
    privleak,
    scalability,
    sustainability,
    verbmem,
)
from unlearnx.eval.llm.probes import (
    answer_probability,
    in_context_reintroduction,
    linear_probe,
    quantization_probe,
    quantize_weights,
    relearning_attack,
)
from unlearnx.eval.llm.results import (
    EvalResult,
    MetricCache,
    fingerprint_data,
    fingerprint_model,
    fingerprint_tokenizer,
    summary_table,
)
from unlearnx.eval.llm.scoring import TokenScores, encode_items, hidden_states, score_tokens
from unlearnx.eval.llm.lm_eval import lm_eval_available, run_lm_eval
from unlearnx.eval.llm.parametric import (
    ConceptVector,
    ablate_concept_vectors,
    concept_token_ids,
    concept_vector_drift,
    locate_concept_vectors,
)
from unlearnx.eval.llm.rwku import (
    evaluate_rwku,
    evaluate_rwku_targets,
    rwku_forget_corpus,
    rwku_mia,
    rwku_probe_prompt,
    rwku_probe_recall,
)
from unlearnx.eval.llm.tofu import (
    evaluate_tofu,
    fact_recall,
    exact_memorization,
    extraction_strength,
    forget_quality,
    model_utility,
    normalized_probability,
    probability,
    tofu_generation_rouge,
    tofu_split_metrics,
    truth_ratio,
    truth_ratio_score,
)
from unlearnx.eval.llm.wmdp import evaluate_wmdp, multiple_choice_scores, wmdp_accuracy, wmdp_prompt

LLM_SUITES = ("tofu", "muse", "wmdp", "rwku")


def evaluate_llm(model, *, suite: str, tokenizer, **kwargs) -> EvalResult:
    """Route to `evaluate_tofu` (suite="tofu"), `evaluate_muse` ("muse"), `evaluate_wmdp` ("wmdp",
    items=...) or `evaluate_rwku` ("rwku", data=RWKUData); the keyword arguments are those of the
    chosen function. This is what `ux.evaluate(model, suite=..., tokenizer=..., ...)` calls."""
    if suite not in LLM_SUITES:
        raise ValueError(f"suite: must be one of {LLM_SUITES}, got {suite!r}")
    if tokenizer is None:
        raise ValueError("tokenizer: required by the LLM suites")
    fn = {"tofu": evaluate_tofu, "muse": evaluate_muse, "wmdp": evaluate_wmdp, "rwku": evaluate_rwku}[suite]
    return fn(model, tokenizer, **kwargs)


__all__ = [
    "LLM_SUITES", "evaluate_llm",
    "EvalResult", "MetricCache", "summary_table", "fingerprint_model", "fingerprint_data", "fingerprint_tokenizer",
    "TokenScores", "encode_items", "score_tokens", "hidden_states",
    "greedy_generate", "cut_at_stop", "rouge_l",
    "probability", "normalized_probability", "truth_ratio", "truth_ratio_score", "forget_quality", "model_utility",
    "extraction_strength", "exact_memorization", "tofu_split_metrics", "tofu_generation_rouge", "evaluate_tofu", "fact_recall",
    "KNOWMEM_STOP_STRINGS", "knowmem_prompt", "verbmem", "knowmem", "muse_auc", "privleak", "evaluate_muse",
    "scalability", "sustainability", "nested_forget_sets",
    "MIA_ATTACKS", "loss_scores", "zlib_scores", "min_k_scores", "min_k_plus_plus_scores", "gradnorm_scores",
    "reference_scores", "mia_auc", "mia_attacks",
    "answer_probability", "relearning_attack", "quantize_weights", "quantization_probe", "linear_probe",
    "in_context_reintroduction",
    "wmdp_prompt", "multiple_choice_scores", "wmdp_accuracy", "evaluate_wmdp",
    "lm_eval_available", "run_lm_eval",
    "rwku_probe_prompt", "rwku_forget_corpus", "rwku_probe_recall", "rwku_mia", "evaluate_rwku",
    "evaluate_rwku_targets",
    "ConceptVector", "concept_token_ids", "locate_concept_vectors", "concept_vector_drift", "ablate_concept_vectors",
]
