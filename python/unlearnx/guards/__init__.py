"""unlearnx.guards: inference-time unlearning that leaves the model's weights untouched.

    from unlearnx.guards import build_eco_guard, ECOGuard
    guard, log = build_eco_guard(model, qa["forget10"], qa["retain90"], tokenizer=tok,
                                 surrogate=never_seen_items)
    guard(input_ids=ids, attention_mask=mask).logits      # flagged prompts are corrupted
    guard.save("eco/"); ECOGuard.load("eco/", model)

ECO (embedding-corrupted prompts, Liu et al., NeurIPS 2024) lives in unlearnx.guards.eco and is
registered as the causal-LM method "eco"; O3 (orthogonal LoRA per request + OOD detector, Gao et
al. 2025, continual unlearning) in unlearnx.guards.o3, registered as "o3":

    guard = O3Guard(model); guard.add_request(forget_1, tokenizer=tok); guard.add_request(forget_2, ...)
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
from unlearnx.guards.o3 import O3, O3Guard, contrastive_entropy_loss, orthogonality_loss, subspace_overlap

__all__ = ["CORRUPTIONS", "ECO", "ECOGuard", "PromptClassifier", "build_eco_guard", "corrupt_embeddings",
           "fit_prompt_classifier", "forget_probability", "search_strength"]
__all__ += ["O3", "O3Guard", "contrastive_entropy_loss", "orthogonality_loss", "subspace_overlap"]
