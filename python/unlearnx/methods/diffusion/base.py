"""Shared pieces of the diffusion-unlearning methods (task "diffusion").

Every method is an `UnlearningMethod` registered with ``task="diffusion"`` whose ``run`` receives
the `DiffusionModel` and ``forget`` / ``retain`` as given to `unlearnx.unlearn`: Datasets (or
DataLoaders) of ``(image, condition, ...)`` items, the condition a prompt (text model) or a class
id (class model). Data-free methods (ESD, UCE) read only the distinct forget conditions
(`unlearnx.diffusion.conditions_of`); the retain conditions are the concepts to preserve.
"""
from __future__ import annotations

import re

from unlearnx.diffusion import conditions_of
from unlearnx.methods.registry import UnlearningMethod

__all__ = ["DiffusionMethod", "LORA_DEFAULTS", "concept_words", "concept_token_positions"]

# Every trained method takes these: full fine-tuning (lora False) or a LoRA adapter of rank lora_rank.
LORA_DEFAULTS = {"lora": False, "lora_rank": 4}


class DiffusionMethod(UnlearningMethod):
    """Base class of the diffusion methods: ``task = "diffusion"``; ``run(model, *, forget, retain,
    seed, progress)`` edits ``model`` (a DiffusionModel) in place and returns the log."""

    requires = ("forget",)
    # The kinds of DiffusionModel the method can edit: "text" (UNet2DConditionModel + text encoder)
    # and/or "class" (class-conditional UNet2DModel). Methods that act on prompts or on the
    # cross-attention narrow it to ("text",); benchmarks and configs read it instead of a list.
    model_kinds = ("text", "class")
    kind_reason = "a class-conditional UNet2DModel has no prompts or cross-attention"

    @classmethod
    def kind_requirement(cls) -> str:
        """'a text-conditional model (why)': what the method needs, for errors here and in configs."""
        return f"a {' or '.join(cls.model_kinds)}-conditional model ({cls.kind_reason})"

    def check_model_kind(self, model) -> None:
        """A clear error when ``model`` is of a kind this method cannot edit."""
        if model.kind not in self.model_kinds:
            req, why = self.kind_requirement().split(" (", 1)
            raise ValueError(f"{self.name} needs {req}; this one is {model.kind}-conditional ({why}")

    @staticmethod
    def forget_conditions(model, forget) -> list:
        return model.check_conditions(conditions_of(forget), "forget conditions")

    @staticmethod
    def retain_conditions(model, retain, forget_conds) -> list:
        if retain is None:
            return []
        return [c for c in model.check_conditions(conditions_of(retain), "retain conditions") if c not in forget_conds]


def _words(prompt: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", prompt.lower())


def concept_words(forget_prompts, retain_prompts=()) -> list[str]:
    """The words of the erased concept: words present in every forget prompt and in no retain
    prompt (e.g. the style name for "a {object} in {style} style" prompts); if that is empty, the
    words of the forget prompts absent from all retain prompts."""
    forget_sets = [set(_words(p)) for p in forget_prompts]
    if not forget_sets:
        raise ValueError("forget has no prompt")
    retain_words = set().union(*(set(_words(p)) for p in retain_prompts)) if retain_prompts else set()
    common = set.intersection(*forget_sets) - retain_words
    if not common:
        common = set.union(*forget_sets) - retain_words
    if not common:
        raise ValueError("cannot tell the concept's words: every forget word also occurs in a retain prompt; "
                         "pass concept= explicitly")
    first = forget_prompts[0]
    return sorted(common, key=lambda w: (_words(first).index(w) if w in _words(first) else 99, w))


def concept_token_positions(model, prompts, words) -> list[list[int]]:
    """Per prompt, the token positions (in ``model.tokenize``'s ids) of the concept words."""
    ids = model.tokenize(prompts)
    word_ids = set()
    for w in words:
        tid = model.tokenizer.convert_tokens_to_ids(w)
        if tid is None or tid == model.tokenizer.unk_token_id:
            # a subword tokenizer (CLIP's BPE): take every id of the word's own encoding
            word_ids.update(model.tokenizer(w, add_special_tokens=False).input_ids)
        else:
            word_ids.add(tid)
    return [[j for j, tid in enumerate(row.tolist()) if tid in word_ids] for row in ids]
