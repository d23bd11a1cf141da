"""SFD (Score Forgetting Distillation): its loss, its one-step generator, argument checks, a smoke run
on the shared tiny text model, and (slow) the paper's claim on a class-conditional model whose
classes are told apart by brightness: the one-step generator's forget-class samples become the
override class's while the retained classes keep theirs (docs/diffusion-erasure.md)."""

import copy

import pytest
import torch

import unlearnx as ux
from unlearnx.diffusion import ConditionedImages, sample, tiny_class_model, train_diffusion
from unlearnx.diffusion.adapters import TrainableUNet
from unlearnx.methods.diffusion.gradients import predicted_x0
from unlearnx.methods.diffusion.sfd import generator_x0, one_step_sample, override_prompts, sid_generator_loss


def test_sfd_is_registered_for_diffusion():
    assert "sfd" in ux.methods.available("diffusion")
    cls = ux.methods.get("sfd", "diffusion")
    assert cls.task == "diffusion" and "Score Forgetting Distillation" in cls.paper


def test_sid_generator_loss_is_the_formula():
    g = torch.Generator().manual_seed(0)
    f_real, f_fake, x_g = (torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    for alpha in (1.2, 1.0, 0.0):
        got = sid_generator_loss(f_real, f_fake, x_g, alpha)
        for i in range(3):
            d = (f_real[i] - f_fake[i]).flatten()
            omega = (f_real[i] - x_g[i]).abs().mean()
            want = (d * ((f_real[i] - x_g[i]).flatten() - alpha * d)).mean() / omega
            assert got[i].item() == pytest.approx(want.item(), rel=1e-6)  # the loss is computed in fp32
    # α = 1: (f_φ − f_ψ)·(f_ψ − x_g) / ω (Diff-Instruct-like form)
    one = sid_generator_loss(f_real, f_fake, x_g, 1.0)
    want = ((f_real - f_fake) * (f_fake - x_g)).mean((1, 2, 3)) / (f_real - x_g).abs().mean((1, 2, 3))
    assert torch.allclose(one, want.float(), rtol=1e-5)
    # ω is a stop-gradient: the gradient w.r.t. x_g is −(f_φ − f_ψ)/(ω · n) per pixel
    x = x_g.clone().requires_grad_(True)
    sid_generator_loss(f_real, f_fake, x, 1.2).sum().backward()
    n = x_g[0].numel()
    omega = (f_real - x_g).abs().mean((1, 2, 3), keepdim=True)
    assert torch.allclose(x.grad, -(f_real - f_fake) / (omega * n), rtol=1e-5)


def _class_model(seed=0):
    torch.manual_seed(seed)
    return tiny_class_model(3, image_size=8, channels=1, block_out_channels=(16, 32))


def test_one_step_generator_is_the_x0_prediction_at_t_init():
    dm = _class_model()
    t_init = 440
    imgs = one_step_sample(dm, [0, 1, 2], t_init=t_init, seed=3, decode=False)
    z = torch.randn((3, *dm.latent_shape), generator=torch.Generator().manual_seed(3))
    a = dm.scheduler.alphas_cumprod[t_init]
    x_init = (1 - a).sqrt() * z
    t = torch.full((3,), t_init)
    with torch.no_grad():
        eps = dm.predict_noise(x_init, t, dm.encode([0, 1, 2]))
    assert torch.allclose(imgs, (x_init - (1 - a).sqrt() * eps) / a.sqrt(), atol=1e-5)
    # same seed, same images, independent of the batch size; decode maps to [0, 1]
    again = one_step_sample(dm, [0, 1, 2], t_init=t_init, seed=3, decode=False, batch_size=2)
    assert torch.allclose(imgs, again, atol=1e-5)
    dec = one_step_sample(dm, [0, 1, 2], t_init=t_init, seed=3)
    assert dec.min() >= 0 and dec.max() <= 1
    with pytest.raises(ValueError, match="t_init"):
        one_step_sample(dm, [0], t_init=dm.num_train_timesteps)
    with pytest.raises(ValueError, match="batch_size"):
        one_step_sample(dm, [0], batch_size=0)


@pytest.mark.parametrize("lora", [False, True])
def test_teacher_gradient_reaches_the_input_only(lora):
    dm = _class_model()
    before = {n: p.detach().clone() for n, p in dm.unet.named_parameters()}
    tr = TrainableUNet(dm, "all", lora=lora, teacher=True)
    try:
        z = torch.randn(2, *dm.latent_shape, requires_grad=True)
        emb = dm.encode([0, 1])
        x_g = generator_x0(dm, z, emb, 440)
        t = torch.full((2,), 300)
        x_t = x_g * 0.5 + 0.1
        out = tr.teacher_noise(x_t, t, emb, grad_input=True)
        assert out.requires_grad
        predicted_x0(dm, x_t, t, out).sum().backward()
        assert z.grad is not None and z.grad.abs().sum() > 0  # through the teacher AND the generator
        # the default stays a no-grad forward
        assert not tr.teacher_noise(x_t.detach(), t, emb).requires_grad
    finally:
        tr.finish()
    after = dict(dm.unet.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_override_prompts_replace_the_concept_words():
    got = override_prompts(["a circle in ocean style", "a square in ocean style"],
                           ["a circle in crimson style"], "deep sea")
    assert got == ["a circle in deep sea style", "a square in deep sea style"]


def test_sfd_bad_arguments_name_the_argument(trained, split):
    forget, retain = split
    dm = _class_model()
    data = ConditionedImages(torch.rand(4, 1, 8, 8), [0, 0, 1, 2])
    f0 = ConditionedImages(torch.rand(2, 1, 8, 8), [0, 0])
    cases = [
        ({"t_min": 500, "t_max": 100}, "t_min"),
        ({"anchor": 1, "override": "x"}, "anchor"),
        ({"fake_lr": 0.0}, "fake_lr"),
        ({"iterations": 0}, "iterations"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"alpha": -1.0}, "alpha"),
        ({"override": ""}, "override"),
    ]
    for kw, word in cases:
        with pytest.raises(ValueError, match=word):
            ux.unlearn(dm, "sfd", forget=f0, retain=data, **kw)
    with pytest.raises(ValueError, match="t_init"):
        ux.unlearn(dm, "sfd", forget=f0, retain=data, t_init=dm.num_train_timesteps)
    with pytest.raises(ValueError, match="t_max"):
        ux.unlearn(dm, "sfd", forget=f0, retain=data, t_max=dm.num_train_timesteps + 1)
    with pytest.raises(ValueError, match="override"):
        ux.unlearn(dm, "sfd", forget=f0, retain=data, override="dark")
    with pytest.raises(TypeError, match="unknown hyper-parameter"):
        ux.unlearn(dm, "sfd", forget=f0, bogus=1)
    with pytest.raises(ValueError, match="retain"):
        ux.unlearn(trained, "sfd", forget=forget, iterations=1)


def test_sfd_runs_on_the_text_model_with_lora(trained, split):
    forget, retain = split
    snapshot = copy.deepcopy(trained.unet.state_dict())
    res = ux.unlearn(trained, "sfd", forget=forget, retain=retain, progress=False, iterations=3, batch_size=4,
                     override="crimson", lora=True)
    log = res.log
    assert log["anchors"] == ["a circle in crimson style", "a square in crimson style", "a triangle in crimson style"]
    assert log["one_step"] and log["t_init"] == 440 and log["lora"]
    assert len(log["fake_loss"]) == len(log["retain_loss"]) == len(log["forget_loss"]) == 3
    assert all(torch.isfinite(torch.tensor(log[k])).all() for k in ("fake_loss", "retain_loss", "forget_loss"))
    # adapter merged: a plain diffusers UNet with the original's parameter names, and it changed
    names = dict(res.model.unet.named_parameters())
    assert set(names) == set(dict(trained.unet.named_parameters()))
    assert any(not torch.equal(p, snapshot[n]) for n, p in names.items())
    # the caller's model is untouched (unlearn works on a copy)
    assert all(torch.equal(v, trained.unet.state_dict()[k]) for k, v in snapshot.items())
    imgs = one_step_sample(res.model, ["a circle in ocean style"], t_init=log["t_init"])
    assert imgs.shape == (1, 3, 8, 8) and torch.isfinite(imgs).all()


def test_sfd_class_model_defaults_and_teacher_guidance():
    """Class model without retain: every other class is distilled unchanged and the override is
    the first of them; the guided-teacher path (guidance_scale != 1) runs."""
    dm = _class_model()
    f0 = ConditionedImages(torch.rand(2, 1, 8, 8), [2, 2])
    res = ux.unlearn(dm, "sfd", forget=f0, progress=False, iterations=2, batch_size=2, guidance_scale=2.0)
    assert res.log["retain_conditions"] == 2 and res.log["anchors"] == ["0"] and res.log["targets"] == [2]
    assert all(torch.isfinite(torch.tensor(res.log[k])).all() for k in ("fake_loss", "retain_loss", "forget_loss"))
    # reproducible from the seed alone
    again = ux.unlearn(dm, "sfd", forget=f0, progress=False, iterations=2, batch_size=2, guidance_scale=2.0)
    assert again.log["fake_loss"] == res.log["fake_loss"]
    assert all(torch.equal(p, q) for p, q in zip(res.model.unet.parameters(), again.model.unet.parameters()))


LEVELS = torch.tensor([0.85, 0.15, 0.5])  # class 0 bright, 1 dark, 2 mid-grey


@pytest.fixture(scope="module")
def brightness_model():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(32)
    x = (LEVELS[y][:, None, None, None] + 0.05 * torch.randn(len(y), 1, 8, 8, generator=g)).clamp(0, 1)
    dm = _class_model()
    train_diffusion(dm, ConditionedImages(x, y.tolist()), steps=300, lr=2e-3, batch_size=32, warmup=10, seed=0)
    return dm


def _shares(model, images_of, n=32):
    """Per requested class (rows), the share of its samples whose mean brightness is nearest each
    class's level (columns): a nearest-level evaluator for this data."""
    labels = torch.arange(3).repeat_interleave(n)
    imgs = images_of(model, labels.tolist()).cpu()
    pred = (imgs.mean((1, 2, 3))[:, None] - LEVELS[None]).abs().argmin(1)
    return torch.stack([torch.bincount(pred[labels == c], minlength=3).float() / n for c in range(3)])


def _one_step(model, labels):
    return one_step_sample(model, labels, seed=1)


def _ddim(model, labels):
    return sample(model, labels, steps=10, seed=2)


@pytest.mark.slow
def test_sfd_turns_the_forget_class_into_the_override_class(brightness_model):
    dm = brightness_model
    forget = ConditionedImages(torch.rand(2, 1, 8, 8), [0, 0])    # data-free: only the conditions are read
    retain = ConditionedImages(torch.rand(4, 1, 8, 8), [1, 1, 2, 2])
    teacher, before = _shares(dm, _ddim), _shares(dm, _one_step)
    res = ux.unlearn(dm, "sfd", forget=forget, retain=retain, progress=False, anchor=1)
    after = _shares(res.model, _one_step)
    control = _shares(ux.unlearn(dm, "sfd", forget=forget, retain=retain, progress=False, anchor=1,
                                 forget_weight=0.0).model, _one_step)
    # the teacher generates every class (DDIM); its one-step x̂0 never looks like the override class
    assert torch.diagonal(teacher).min() > 0.9, teacher
    assert before[0, 1] == 0.0, before
    # SFD: the one-step generator's class-0 samples land on the override class 1 (measured 0.97)...
    assert after[0, 1] > 0.75, after
    assert after[0, 0] == 0.0, after
    # ... and it is the score-forgetting term that does it: pure score distillation (λ_f = 0) does not
    assert control[0, 1] < 0.25, control
    # retained classes keep their class in one step (measured 0.62 -> 1.0 and 1.0 -> 1.0)
    for c in (1, 2):
        assert after[c, c] >= before[c, c] - 0.15, (c, before, after)
    # the returned weights under the multi-step sampler: class 0 forgotten (it lands on mid-grey,
    # not on the override class), classes 1 and 2 kept
    ddim = _shares(res.model, _ddim)
    assert ddim[0, 0] < 0.1 and ddim[1, 1] > 0.9 and ddim[2, 2] > 0.9, ddim
