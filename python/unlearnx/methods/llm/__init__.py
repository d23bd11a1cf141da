"""Unlearning methods for causal language models (any transformers AutoModelForCausalLM).

Registered under task "causal_lm" with their paper names: ga, graddiff, npo, simnpo, idknll,
idkdpo, rmu, undial, wga, flat, whp, task_vector, wagle, uoe, uld, concept_vector_ablation,
concept_poison (the LM variant of the classifier method of the same name).
`unlearnx.unlearn` routes a transformers causal LM here; see unlearnx.methods.llm.base for the calling convention, the common hyper-parameters,
LoRA and the cached reference statistics. transformers and peft are imported only when used.
"""
from unlearnx.methods.llm import flat, ga, idk, npo, rmu, undial, uoe, wagle, wga, whp  # noqa: F401  (registers)
from unlearnx.methods.llm import uld  # noqa: F401  (registers ULD)
from unlearnx.methods.llm import concept_vectors  # noqa: F401  (registers concept_vector_ablation)
from unlearnx.methods.llm import concept_poison  # noqa: F401  (registers concept_poison for causal LMs)
from unlearnx.methods.llm.base import COMMON_DEFAULTS, LLMMethod, is_causal_lm, prepare_lm, run_lm
from unlearnx.methods.llm.losses import answer_logprobs, mean_nll, sequence_logprob

__all__ = ["LLMMethod", "COMMON_DEFAULTS", "is_causal_lm", "prepare_lm", "run_lm", "answer_logprobs",
           "mean_nll", "sequence_logprob"]
