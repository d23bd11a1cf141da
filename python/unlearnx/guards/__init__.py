"""unlearnx.guards: inference-time unlearning that leaves the model's weights untouched.

    from unlearnx.guards import build_eco_guard, ECOGuard
    guard, log = build_eco_guard(model, qa["forget10"], qa["retain90"], tokenizer=tok,
                                 surrogate=never_seen_items)
    guard(input_ids=ids, attention_mask=mask).logits      # flagged prompts are corrupted
    guard.save("eco/"); ECOGuard.load("eco/", model)

ECO (embedding-corrupted prompts, Liu et al., NeurIPS 2024) lives in unlearnx.guards.eco and is
registered as the causal-LM method "eco".
"""
from unlearnx.guards.eco import (
    CORRUPTIONS,
    ECO,
    ECOGuard,
    PromptClassifier,
    build_eco_guard,
    corrupt_embeddings,
    fit_prompt_classifier,
    forget_probability,
    search_strength,
)

__all__ = ["CORRUPTIONS", "ECO", "ECOGuard", "PromptClassifier", "build_eco_guard", "corrupt_embeddings",
           "fit_prompt_classifier", "forget_probability", "search_strength"]
