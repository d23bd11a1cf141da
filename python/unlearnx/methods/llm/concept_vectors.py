"""Concept-vector ablation: the baseline of Hong et al., 2024 ("Intrinsic Evaluation of Unlearning
Using Parametric Knowledge Traces", arXiv:2406.11614) that removes a concept by editing the MLP
value vectors that encode it, instead of fine-tuning.

The vectors are located in the model itself (`unlearnx.eval.llm.parametric.locate_concept_vectors`:
the `top_n` value vectors whose vocabulary projection W_U v_j ranks the concept's tokens highest)
and ablated in place: set to zero (`mode="zero"`) or replaced by Gaussian noise of the same
per-entry scale (`mode="noise"`, `noise_scale`). No training step: the forget data is not read.

Hyper-parameters: concept_tokens (list of token ids, required; build it with
`unlearnx.eval.llm.parametric.concept_token_ids(tokenizer, ["Harry", "Potter"])`), top_n 1,
mode "zero", noise_scale 1.0. The located vectors are in `log["vectors"]` (param, expert, index,
score) so `concept_vector_drift` can be run on them afterwards.
"""
from __future__ import annotations

from unlearnx.methods.llm.base import COMMON_DEFAULTS, LLMMethod
from unlearnx.methods.registry import register_method


@register_method("concept_vector_ablation", task="causal_lm")
class ConceptVectorAblation(LLMMethod):
    """Ablate the located concept vectors (zero or Gaussian noise); Hong et al., 2024."""

    paper = "Hong et al., 'Intrinsic Evaluation of Unlearning Using Parametric Knowledge Traces', arXiv:2406.11614"
    trains = False
    defaults = {**COMMON_DEFAULTS, "concept_tokens": None, "top_n": 1, "mode": "zero", "noise_scale": 1.0}

    def validate(self) -> None:
        super().validate()
        hp = self.hparams
        tokens = hp["concept_tokens"]
        if tokens is None or isinstance(tokens, (str, bytes)) or not list(tokens) or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens):
            raise ValueError("concept_tokens: required, a non-empty list of token ids "
                             "(unlearnx.eval.llm.parametric.concept_token_ids(tokenizer, words))")
        if hp["top_n"] < 1:
            raise ValueError(f"top_n must be >= 1, got {hp['top_n']}")
        if hp["mode"] not in ("zero", "noise"):
            raise ValueError(f"mode must be 'zero' or 'noise', got {hp['mode']!r}")

    def apply(self, model, forget, progress):
        from unlearnx.eval.llm.parametric import ablate_concept_vectors, locate_concept_vectors

        hp = self.hparams
        vectors = locate_concept_vectors(model, hp["concept_tokens"], top_n=hp["top_n"])
        ablate_concept_vectors(model, vectors, mode=hp["mode"], noise_scale=hp["noise_scale"], seed=self.seed)
        self.log = {"vectors": [{"param": v.param, "expert": v.expert, "index": v.index, "score": v.score}
                                for v in vectors]}
        return model
