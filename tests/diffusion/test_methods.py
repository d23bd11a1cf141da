"""Each diffusion method on a tiny trained text-conditional model (3 styles x 3 objects, 8x8).

A model this small cannot show evaluator-level UA within seconds, so the measured metrics are
the forget-condition denoising behaviour: the L_simple loss of forget / retain images under their
own prompts at fixed (t, ε), and `guidance_alignment` (the share of the original's guidance
direction ε(c) − ε(∅) a model keeps for a prompt: 1 unchanged, 0 erased to the empty prompt).
"""

import pytest
import torch
from _diffusion_checks import RECIPE, _fixed, measure

import unlearnx as ux
from unlearnx.diffusion import diffusion_loss, train_diffusion
from unlearnx.diffusion.attention import capture_cross_attention
from unlearnx.eval.diffusion import change_storage
from unlearnx.methods.diffusion import concept_token_positions, uce_closed_form
from unlearnx.methods.diffusion.fmn import concept_attention_loss


def test_registry_has_the_diffusion_methods_and_unlearn_dispatches():
    names = ux.methods.available("diffusion")
    for n in ("retrain", "esd_x", "esd_u", "salun", "fmn", "uce"):
        assert n in names
    assert ux.methods.get("salun").task == "classifier"  # classifier keeps the bare name
    assert ux.methods.get("salun", "diffusion").task == "diffusion"


@pytest.mark.slow
def test_retrain_is_the_oracle_direction(trained, split, base):
    forget, retain = split
    res = ux.unlearn(trained, "retrain", forget=forget, retain=retain, progress=False, **RECIPE)
    m = measure(res.model, trained, split)
    # never saw the ocean style: its forget loss is clearly higher, retain loss close
    assert m["forget_loss"] > 1.3 * base["forget_loss"], (m, base)
    assert m["retain_loss"] < 1.3 * base["retain_loss"], (m, base)


@pytest.mark.slow
@pytest.mark.parametrize("method,kw", [
    ("esd_x", {}),
    ("esd_u", {}),
    ("esd_x", {"lora": True, "lora_rank": 4}),
])
def test_esd_reverses_the_concept_guidance(trained, split, base, method, kw):
    forget, retain = split
    res = ux.unlearn(trained, method, forget=forget, retain=retain, progress=False, iterations=40, lr=1e-3,
                     ddim_steps=8, **kw)
    m = measure(res.model, trained, split)
    # ESD's target for the erased prompt is ε*(∅) − η(ε*(c) − ε*(∅)): alignment 1 -> toward −η
    assert m["forget_align"] < 0.5, m
    assert m["forget_loss"] > base["forget_loss"], (m, base)
    # denoising of the retained styles holds; their guidance direction is NOT asserted: on this
    # tiny random text encoder the prompts differ in one word and ESD reverses them too (ESD's
    # known interference; measured in docs/diffusion.md)
    assert m["retain_loss"] < 1.15 * base["retain_loss"], (m, base)
    if kw.get("lora"):
        # adapter merged: a plain diffusers UNet again, same parameter names as the original
        assert set(dict(res.model.unet.named_parameters())) == set(dict(trained.unet.named_parameters()))
    changed = change_storage(trained.unet, res.model.unet)
    part = "attn2" if method == "esd_x" else None
    names = [n for n, p in res.model.unet.named_parameters()
             if not torch.equal(p, dict(trained.unet.named_parameters())[n])]
    assert changed["changed_tensors"] == len(names) > 0
    if part:
        assert all("attn2" in n for n in names)
    else:
        assert not any("attn2" in n or "time_embedding" in n for n in names)


def test_salun_raises_forget_loss_keeps_retain_and_respects_the_mask(trained, split, base):
    forget, retain = split
    res = ux.unlearn(trained, "salun", forget=forget, retain=retain, progress=False, steps=30)
    m = measure(res.model, trained, split)
    assert m["forget_loss"] > 1.15 * base["forget_loss"], (m, base)
    assert m["retain_loss"] < 1.1 * base["retain_loss"], (m, base)
    assert m["forget_align"] < base["forget_align"]
    ch = change_storage(trained.unet, res.model.unet)
    assert res.log["mask_fraction"] == pytest.approx(0.5, abs=1e-3)
    assert ch["changed_params"] <= 0.5 * ch["total_params"] + 1


def test_salun_retain_batch_size_sets_the_retain_batch_apart(monkeypatch):
    """retain_batch_size draws retain batches of that size (forget batches keep batch_size); None
    means batch_size."""
    import unlearnx.methods.diffusion.salun as salun_mod
    from unlearnx.diffusion import ConditionedImages, tiny_class_model

    torch.manual_seed(0)
    dm = tiny_class_model(3, image_size=8, channels=1, block_out_channels=(16, 32))
    forget = ConditionedImages(torch.rand(8, 1, 8, 8), [0] * 8)
    retain = ConditionedImages(torch.rand(16, 1, 8, 8), [1, 2] * 8)
    seen = []
    real = salun_mod.salun_losses

    def spy(model, xf, cf, relabel, xr, cr):
        seen.append((len(xf), len(xr)))
        return real(model, xf, cf, relabel, xr, cr)

    monkeypatch.setattr(salun_mod, "salun_losses", spy)
    ux.unlearn(dm, "salun", forget=forget, retain=retain, steps=2, batch_size=4, retain_batch_size=2)
    ux.unlearn(dm, "salun", forget=forget, retain=retain, steps=2, batch_size=4)
    assert seen == [(4, 2), (4, 2), (4, 4), (4, 4)]


@pytest.mark.parametrize("kind", ["text", "class"])
def test_salun_losses_in_one_pass_equal_two_separate_passes(trained, split, kind):
    """The fused forget + retain forward of SalUn's step gives Eq. 8's two terms exactly as two passes
    (same t and ε draws, forget batch first), and gradients to match."""
    from unlearnx.diffusion import (ConditionedImages, denoise_mse, diffusion_loss, noisy_latents,
                                    tiny_class_model)
    from unlearnx.methods.diffusion.salun import salun_losses

    if kind == "text":
        model = trained
        forget, retain = split
        xf, cf = torch.stack([forget[i][0] for i in range(4)]), [forget[i][1] for i in range(4)]
        xr, cr = torch.stack([retain[i][0] for i in range(5)]), [retain[i][1] for i in range(5)]
        relabel = [cr[0]] * 4
    else:
        torch.manual_seed(0)
        model = tiny_class_model(3, image_size=8, channels=1, block_out_channels=(16, 32), prediction_type="v_prediction")
        data = ConditionedImages(torch.rand(9, 1, 8, 8), [0, 0, 0, 1, 1, 1, 2, 2, 2])
        xf, cf = torch.stack([data[i][0] for i in range(3)]), [0, 0, 0]
        xr, cr = torch.stack([data[i][0] for i in range(3, 9)]), [1, 1, 1, 2, 2, 2]
        relabel = [1, 2, 1]
    params = [p for p in model.unet.parameters() if p.requires_grad]

    torch.manual_seed(5)
    lf, lr = salun_losses(model, xf, cf, relabel, xr, cr)
    g_fused = torch.autograd.grad(lf + 2.0 * lr, params)

    torch.manual_seed(5)
    x_t, t, _ = noisy_latents(model, model.to_latents(xf))
    with torch.no_grad():
        target = model.predict_noise(x_t, t, model.encode(relabel))
    lf2 = denoise_mse(model, model.predict_noise(x_t, t, model.encode(cf)), target, t)
    lr2 = diffusion_loss(model, xr, cr).mean()
    g_two = torch.autograd.grad(lf2 + 2.0 * lr2, params)
    assert lf.item() == pytest.approx(lf2.item(), rel=1e-5) and lr.item() == pytest.approx(lr2.item(), rel=1e-5)
    assert lf.item() > 0 and lr.item() > 0
    for a, b in zip(g_fused, g_two):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fmn_lowers_the_concept_attention(trained, split, base):
    forget, retain = split

    def concept_attention(model):
        x, c, t, n = _fixed(forget, 1)
        pos = concept_token_positions(model, c, ["ocean"])
        from unlearnx.diffusion import noisy_latents
        x_t, tt, _ = noisy_latents(model, model.to_latents(x), t, n)
        with torch.no_grad(), capture_cross_attention(model.unet) as maps:
            model.predict_noise(x_t, tt, model.encode(c))
            return float(concept_attention_loss(maps, pos))

    res = ux.unlearn(trained, "fmn", forget=forget, retain=retain, progress=False)
    assert res.log["concept_words"] == ["ocean"]
    assert concept_attention(res.model) < 0.5 * concept_attention(trained)
    m = measure(res.model, trained, split)
    # FMN's claim is the attention shift above; its effect on the guidance direction is not
    # monotone on this tiny model (alignment moved either way between runs), so only retain is held
    assert m["retain_loss"] < 1.15 * base["retain_loss"], (m, base)
    # outputs unchanged by the capture processors themselves
    x, c, t, n = _fixed(retain, 1)
    with torch.no_grad():
        plain = diffusion_loss(trained, x, c, t=t, noise=n)
        with capture_cross_attention(trained.unet):
            hooked = diffusion_loss(trained, x, c, t=t, noise=n)
    assert torch.allclose(plain, hooked, atol=1e-5)


def test_uce_erases_to_the_anchor_and_preserves_the_rest(trained, split, base):
    forget, retain = split
    res = ux.unlearn(trained, "uce", forget=forget, retain=retain, progress=False)
    m = measure(res.model, trained, split)
    assert m["forget_align"] < 0.6, m
    assert m["retain_align"] > 0.8, m
    assert m["retain_align"] - m["forget_align"] > 0.3, m
    ch = change_storage(trained.unet, res.model.unet)
    assert ch["changed_tensors"] == len(res.log["edited"]) > 0
    assert all(n.endswith(("to_k.weight", "to_v.weight")) and "attn2" in n for n in res.log["edited"])


def test_uce_closed_form_equals_least_squares():
    g = torch.Generator().manual_seed(0)
    d_out, d_in, nE, nP, lam = 5, 7, 4, 6, 0.3
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    C, Cs, P = (torch.randn(n, d_in, generator=g, dtype=torch.float64) for n in (nE, nE, nP))
    got = uce_closed_form(W, C, Cs, P, lam)
    # min_W Σ_E ||W c_i − W c_i*||² + Σ_P ||W c_j − W_old c_j||² + λ ||W − W_old||²_F, stacked as A Wᵀ = B
    A = torch.cat([C, P, lam ** 0.5 * torch.eye(d_in, dtype=torch.float64)])
    B = torch.cat([Cs @ W.T, P @ W.T, lam ** 0.5 * W.T])
    want = torch.linalg.lstsq(A, B).solution.T
    assert torch.allclose(got, want, atol=1e-10)
    # without preserved concepts, and argument checks
    got0 = uce_closed_form(W, C, Cs, None, lam)
    A0, B0 = torch.cat([C, lam ** 0.5 * torch.eye(d_in, dtype=torch.float64)]), torch.cat([Cs @ W.T, lam ** 0.5 * W.T])
    assert torch.allclose(got0, torch.linalg.lstsq(A0, B0).solution.T, atol=1e-10)
    with pytest.raises(ValueError, match="anchor"):
        uce_closed_form(W, C, Cs[:2], P, lam)
    with pytest.raises(ValueError, match="lam"):
        uce_closed_form(W, C, Cs, P, 0.0)


def test_cross_attention_methods_reject_a_class_model():
    from unlearnx.diffusion import ConditionedImages, tiny_class_model

    torch.manual_seed(0)
    dm = tiny_class_model(3, image_size=8, channels=1, block_out_channels=(16, 32))
    data = ConditionedImages(torch.rand(6, 1, 8, 8), [0, 0, 1, 1, 2, 2])
    for method in ("esd_x", "uce", "fmn", "spm", "advunlearn"):  # the methods whose model_kinds is ("text",)
        assert ux.methods.get(method, task="diffusion").model_kinds == ("text",)
        with pytest.raises(ValueError, match=f"{method} needs a text-conditional model; this one is class-conditional"):
            ux.unlearn(dm, method, forget=data, retain=data)
    # ESD-u and SalUn work on class-conditional models (c = class id, ∅ = the null class)
    res = ux.unlearn(dm, "esd_u", forget=ConditionedImages(torch.rand(2, 1, 8, 8), [0, 0]), iterations=2, ddim_steps=2)
    assert res.log["concepts"] == [0]
    res = ux.unlearn(dm, "salun", forget=ConditionedImages(torch.rand(2, 1, 8, 8), [0, 0]),
                     retain=ConditionedImages(torch.rand(4, 1, 8, 8), [1, 1, 2, 2]), steps=2)
    assert 0.49 < res.log["mask_fraction"] < 0.51
    with pytest.raises(ValueError, match="retain_batch_size"):
        ux.unlearn(dm, "salun", forget=data, retain=data, retain_batch_size=0)
    with pytest.raises(TypeError, match="unknown hyper-parameter"):
        ux.unlearn(dm, "esd_u", forget=data, bogus=1)


@pytest.mark.slow
def test_stable_diffusion_shaped_model_end_to_end(tmp_path):
    """Latent text model (VAE + CLIPTextModel + UNet2DConditionModel): train, save/load, ESD-x with
    LoRA, sample."""
    from unlearnx.data.canvas import canvas_dataset
    from unlearnx.diffusion import load_pipeline, sample, tiny_text_model

    data = canvas_dataset(n_per_pair=3, size=16, n_styles=2, n_objects=2, seed=0)
    torch.manual_seed(0)
    dm = tiny_text_model(data.prompts, image_size=16, block_out_channels=(16, 32), text_dim=16, text_layers=1,
                         max_length=8, latent=True)
    log = train_diffusion(dm, data, steps=10, batch_size=6, warmup=2)
    assert log["loss"][-1] < log["loss"][0] or len(log["loss"]) == 1
    dm.save_pretrained(tmp_path / "sd")
    dm = load_pipeline(tmp_path / "sd")
    forget, retain = data.split_style("ocean")
    res = ux.unlearn(dm, "esd_x", forget=forget, retain=retain, iterations=3, ddim_steps=3, lora=True, progress=False)
    assert res.log["lora"] and res.log["trainable_params"] > 0
    imgs = sample(res.model, ["a circle in ocean style", "a square in crimson style"], steps=3)
    assert imgs.shape == (2, 3, 16, 16) and torch.isfinite(imgs).all()
