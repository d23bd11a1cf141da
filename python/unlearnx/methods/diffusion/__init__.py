"""Diffusion-model unlearning methods (task "diffusion"), one module per method.

    ux.unlearn(dm, "esd_x", forget=forget_set, retain=retain_set)   # dm: unlearnx.diffusion.DiffusionModel

forget / retain: Datasets of (image, condition, ...) items (condition: prompt or class id).
Registered: retrain (oracle), esd_x, esd_u, salun, fmn, uce (and the second batch below, advunlearn, sfd).
"""
from unlearnx.methods.diffusion import esd, fmn, retrain, salun, uce  # noqa: F401  (registers the methods)
from unlearnx.methods.diffusion.base import DiffusionMethod, concept_token_positions, concept_words
from unlearnx.methods.diffusion.uce import uce_closed_form

__all__ = ["DiffusionMethod", "concept_words", "concept_token_positions", "uce_closed_form"]

# Second batch (h-diffusion2): Concept Ablation, EraseDiff, Scissorhands, Selective Amnesia, SPM, DoCo
# (docs/diffusion-erasure.md).
from unlearnx.methods.diffusion import (  # noqa: F401,E402  (registers the methods)
    concept_ablation,
    doco,
    erasediff,
    scissorhands,
    selective_amnesia,
    spm,
)
# Robust erasure (issue 21): AdvUnlearn, adversarial training against the attacks of unlearnx.diffusion.attacks
from unlearnx.methods.diffusion import advunlearn  # noqa: E402,F401  (registers "advunlearn")
# Score Forgetting Distillation (issue 20): data-free distillation into a one-step generator
from unlearnx.methods.diffusion import sfd  # noqa: E402,F401  (registers "sfd")
from unlearnx.methods.diffusion.sfd import one_step_sample  # noqa: E402

__all__.append("one_step_sample")
