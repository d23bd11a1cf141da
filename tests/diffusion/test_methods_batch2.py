"""The second batch of diffusion methods (Concept Ablation, EraseDiff, Scissorhands, Selective
Amnesia, SPM, DoCo) on the tiny trained text model of tests/diffusion (3 styles x 3 objects, 8x8,
the "ocean" style erased). Metrics as in test_methods.py: L_simple of forget / retain images under
their prompts at fixed (t, ε) and `guidance_alignment`; plus each paper's own target where the
generic metrics cannot show it (CA / DoCo: distance to the frozen model's anchor prediction; SA:
the surrogate's likelihood under the forget prompt). Numbers measured when written are in
docs/diffusion-erasure.md.
"""

import pytest
import torch
from _diffusion_checks import _fixed, measure

import unlearnx as ux
from unlearnx.diffusion import diffusion_loss, noisy_latents
from unlearnx.diffusion.adapters import cross_attention_modules
from unlearnx.eval.diffusion import change_storage
from unlearnx.methods.diffusion.concept_ablation import concept_anchors
from unlearnx.methods.diffusion.spm import spm_membranes

pytestmark = pytest.mark.slow  # one 120-step model + ~10 s per method on 2 cores


@torch.no_grad()
def anchor_distance(model, original, forget, retain, anchor=None):
    """Mean ‖ε_θ(x_t, c*) − ε_θ*(x_t, c_anchor)‖² over forget images (Concept Ablation's / DoCo's target)."""
    x, c, t, n = _fixed(forget, 1)
    anchors = concept_anchors(original, c, [p for p in retain.prompts if p not in c], anchor)
    x_t, tt, _ = noisy_latents(original, original.to_latents(x), t, n)
    return float((model.predict_noise(x_t, tt, model.encode(c))
                  - original.predict_noise(x_t, tt, original.encode(anchors))).pow(2).mean())


# On this tiny model the prompts barely change the prediction (target vs anchor distance ~3e-5), so
# with the paper's λ = 1 the anchor regularizer's gradient swamps the ablation term and the distance
# does not fall (measured: 3.5e-5 vs 3.0e-5 before); the tests check the ablation term alone (λ = 0).
# The default anchor ("a circle in style") already predicts almost what the ocean
# prompts do (distance ~1e-5), so the tests anchor on another style's prompt, which differs clearly.
ANCHOR = "a square in crimson style"
TARGET = "a square in ocean style"


@torch.no_grad()
def ablation_distance(model, original, retain):
    """Concept Ablation's objective on anchor images: mean ‖ε_θ(x_t, c*) − ε_θ*(x_t, c_anchor)‖²."""
    idx = [i for i, p in enumerate(retain.prompts) if p == ANCHOR]
    g = torch.Generator().manual_seed(0)
    x = retain.images[idx].repeat(4, 1, 1, 1)
    t, n = torch.randint(50, 700, (len(x),), generator=g), torch.randn(x.shape, generator=g)
    x_t, tt, _ = noisy_latents(original, original.to_latents(x), t, n)
    return float((model.predict_noise(x_t, tt, model.encode([TARGET] * len(x)))
                  - original.predict_noise(x_t, tt, original.encode([ANCHOR] * len(x)))).pow(2).mean())


def test_concept_ablation_default_anchor_drops_the_concept_words(trained, split):
    forget, retain = split
    anchors = concept_anchors(trained, forget.prompts, retain.prompts)
    assert anchors == [p.replace(" ocean", "") for p in forget.prompts]


def test_concept_ablation_maps_the_target_onto_the_anchor(trained, split, base):
    forget, retain = split
    res = ux.unlearn(trained, "concept_ablation", forget=forget, retain=retain, progress=False, steps=80, lr=1e-3,
                     anchor=ANCHOR, reg_weight=0.0)
    assert ablation_distance(res.model, trained, retain) < 0.7 * ablation_distance(trained, trained, retain)
    m = measure(res.model, trained, split)
    assert m["retain_loss"] < 1.05 * base["retain_loss"], (m, base)


def test_concept_ablation_lora(trained, split, base):
    forget, retain = split
    res = ux.unlearn(trained, "concept_ablation", forget=forget, retain=retain, progress=False, steps=40, lr=1e-3,
                     lora=True, anchor=ANCHOR, reg_weight=0.0)
    assert res.log["lora"]
    assert ablation_distance(res.model, trained, retain) < ablation_distance(trained, trained, retain)


def test_erasediff_raises_forget_loss_keeps_retain(trained, split, base):
    forget, retain = split
    res = ux.unlearn(trained, "erasediff", forget=forget, retain=retain, progress=False, steps=80)
    m = measure(res.model, trained, split)
    assert m["forget_loss"] > 1.3 * base["forget_loss"], (m, base)
    assert m["retain_loss"] < 1.15 * base["retain_loss"], (m, base)
    # The guidance of the forget prompt weakens; how far depends on the trained instance (measured
    # -0.25 on one draw, 0.60 on the seed-deterministic model of tests/diffusion/conftest.py).
    assert m["forget_align"] < 0.75 * base["forget_align"], m


def test_scissorhands_trims_then_repairs(trained, split, base):
    forget, retain = split
    res = ux.unlearn(trained, "scissorhands", forget=forget, retain=retain, progress=False, steps=60)
    total = sum(p.numel() for p in trained.unet.parameters())
    assert res.log["trimmed"] == int(0.01 * total)
    m = measure(res.model, trained, split)
    assert m["forget_loss"] > 2 * base["forget_loss"], (m, base)
    # the repair lowers the retain loss (its last steps below its first); on this tiny model it does
    # NOT get back to the original's within 60 steps (reported in docs/diffusion-erasure.md)
    assert sum(res.log["retain_loss"][-10:]) < sum(res.log["retain_loss"][:10])


def test_selective_amnesia_learns_the_surrogate_for_the_forget_prompt(trained, split, base):
    forget, retain = split
    res = ux.unlearn(trained, "selective_amnesia", forget=forget, retain=retain, progress=False, steps=40)
    g = torch.Generator().manual_seed(1)
    noise_images = torch.rand((len(forget), *forget.images.shape[1:]), generator=g)
    _, c, t, n = _fixed(forget, 1)
    with torch.no_grad():
        before = float(diffusion_loss(trained, noise_images, c, t=t, noise=n).mean())
        after = float(diffusion_loss(res.model, noise_images, c, t=t, noise=n).mean())
    assert after < 0.95 * before, (after, before)  # the forget prompt now generates the surrogate
    m = measure(res.model, trained, split)
    assert m["forget_loss"] > 1.05 * base["forget_loss"], (m, base)
    assert m["retain_loss"] < 1.2 * base["retain_loss"], (m, base)


def test_spm_erases_the_concept_and_leaves_retain_prompts_untouched(trained, split, base):
    forget, retain = split
    res = ux.unlearn(trained, "spm", forget=forget, retain=retain, progress=False, steps=40)
    assert res.log["concept_words"] == ["ocean"]
    assert len(spm_membranes(res.model.unet)) == 2 * len(cross_attention_modules(trained.unet))  # to_k, to_v each
    # what SPM stores is its membranes' u, v vectors: the wrapped base weights are the original's
    membrane = sum(m.u.numel() + m.v.numel() for m in spm_membranes(res.model.unet))
    assert change_storage(trained.unet, res.model.unet)["changed_params"] == membrane
    m = measure(res.model, trained, split)
    assert m["forget_align"] < 0.3, m
    # facilitated transport: retain prompts are below τ, so γ = 0 and the outputs are the original's
    assert m["retain_loss"] == pytest.approx(base["retain_loss"], rel=1e-5)
    assert m["retain_align"] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="already carries"):
        ux.unlearn(res.model, "spm", forget=forget, retain=retain, progress=False, steps=1)


def test_doco_moves_the_target_toward_the_anchor_domain(trained, split, base):
    forget, retain = split
    res = ux.unlearn(trained, "doco", forget=forget, retain=retain, progress=False, steps=40)
    assert len(res.log["disc_loss"]) == 40 and 0 <= res.log["conflicts"] <= 40
    assert anchor_distance(res.model, trained, forget, retain) < anchor_distance(trained, trained, forget, retain)
    m = measure(res.model, trained, split)
    assert m["retain_loss"] < 1.05 * base["retain_loss"], (m, base)
