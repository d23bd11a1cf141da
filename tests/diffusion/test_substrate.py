import copy

import pytest
import torch

from unlearnx.data.canvas import canvas_dataset, digits_upscaled
from unlearnx.diffusion import (
    ConditionedImages,
    DiffusionModel,
    conditions_of,
    diffusion_loss,
    load_pipeline,
    sample,
    tiny_class_model,
    tiny_text_model,
    train_diffusion,
    word_tokenizer,
)


def test_canvas_is_deterministic_from_the_seed():
    a = canvas_dataset(n_per_pair=2, size=16, n_styles=3, n_objects=4, seed=3)
    b = canvas_dataset(n_per_pair=2, size=16, n_styles=3, n_objects=4, seed=3)
    c = canvas_dataset(n_per_pair=2, size=16, n_styles=3, n_objects=4, seed=4)
    assert torch.equal(a.images, b.images) and a.prompts == b.prompts
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (24, 3, 16, 16) and 0 <= a.images.min() and a.images.max() <= 1
    assert a.prompts[0] == "a circle in crimson style"
    f, r = a.split_style("ocean")
    assert len(f) == 8 and len(r) == 16 and all("ocean" in p for p in f.prompts)
    assert not any("ocean" in p for p in r.prompts)
    with pytest.raises(ValueError, match="n_styles"):
        canvas_dataset(n_styles=99)


def test_digits_upscaled_shapes():
    tr, te = digits_upscaled(size=16)
    assert tr.tensors[0].shape[1:] == (1, 16, 16) and len(tr) + len(te) == 1797


def test_word_tokenizer_layout_and_save_load(tmp_path):
    from transformers import AutoTokenizer

    tok = word_tokenizer(["a circle in ocean style"], max_length=8)
    ids = tok(["a circle in ocean style", ""], padding="max_length", max_length=8, return_tensors="pt").input_ids
    assert ids[0].tolist()[:7] == [1, 4, 5, 6, 7, 8, 2] and ids[1].tolist()[:3] == [1, 2, 0]
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert back(["a circle in ocean style"]).input_ids == tok(["a circle in ocean style"]).input_ids


def test_diffusion_loss_shape_and_training_lowers_it(tiny_canvas, tiny_text):
    dm = copy.deepcopy(tiny_text)
    x, c = tiny_canvas.images[:16], tiny_canvas.prompts[:16]
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (16,), generator=g)
    noise = torch.randn(x.shape, generator=g)
    with torch.no_grad():
        before = diffusion_loss(dm, x, c, t=t, noise=noise)
    assert before.shape == (16,)
    log = train_diffusion(dm, tiny_canvas, steps=40, lr=2e-3, batch_size=16, warmup=5)
    with torch.no_grad():
        after = diffusion_loss(dm, x, c, t=t, noise=noise)
    assert after.mean() < 0.7 * before.mean(), (before.mean(), after.mean(), log["loss"])


def test_sample_shapes_range_and_determinism(tiny_text):
    a = sample(tiny_text, ["a circle in ocean style", ""], steps=3, seed=1)
    b = sample(tiny_text, ["a circle in ocean style", ""], steps=3, seed=1, batch_size=1)
    assert a.shape == (2, 3, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert torch.allclose(a, b, atol=1e-5)
    c = sample(tiny_text, ["a circle in ocean style"], steps=3, seed=1, scheduler="ddpm")
    assert c.shape == (1, 3, 8, 8)
    with pytest.raises(TypeError, match="conditions"):
        sample(tiny_text, [3], steps=2)


def test_class_model_trains_and_samples():
    tr, _ = digits_upscaled(size=8)
    x, y = tr.tensors
    data = ConditionedImages(x[:64], y[:64])
    torch.manual_seed(0)
    dm = tiny_class_model(10, image_size=8, channels=1, block_out_channels=(16, 32))
    assert dm.kind == "class" and dm.null_condition == 10 and conditions_of(data)[:3] == y[:3].tolist()
    train_diffusion(dm, data, steps=3, batch_size=16)
    out = sample(dm, [0, 1, 10], steps=2)
    assert out.shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="class id"):
        dm.encode([11])


def test_bad_inputs_name_the_argument(tiny_text):
    with pytest.raises(ValueError, match="steps"):
        train_diffusion(tiny_text, [(torch.zeros(3, 8, 8), "a")], steps=0)
    with pytest.raises(ValueError, match="text_encoder"):
        DiffusionModel(tiny_text.unet, tiny_text.scheduler)
    with pytest.raises(FileNotFoundError):
        load_pipeline("/nonexistent/dir")


def test_stable_diffusion_shaped_pipeline_round_trip(tmp_path):
    """A tiny latent text model (UNet2DConditionModel + CLIPTextModel + tokenizer + AutoencoderKL +
    DDPMScheduler), saved as a StableDiffusionPipeline directory and loaded back with from_pretrained."""
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(0)
    dm = tiny_text_model(["a circle in ocean style"], image_size=16, block_out_channels=(16, 32), text_dim=16,
                         text_layers=1, max_length=8, latent=True)
    pipe = StableDiffusionPipeline(vae=dm.vae, text_encoder=dm.text_encoder, tokenizer=dm.tokenizer, unet=dm.unet,
                                   scheduler=dm.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(tmp_path)
    back = load_pipeline(tmp_path)
    assert back.kind == "text" and back.vae is not None and back.latent_shape == (4, 8, 8)
    assert back.image_shape == (3, 16, 16)
    x = torch.rand(2, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([10, 500])
    noise = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        a = diffusion_loss(dm, x, ["a circle in ocean style", ""], t=t, noise=noise)
        b = diffusion_loss(back, x, ["a circle in ocean style", ""], t=t, noise=noise)
    assert torch.allclose(a, b, atol=1e-5)
    # our own writer gives the same directory layout
    dm.save_pretrained(tmp_path / "own")
    assert load_pipeline(tmp_path / "own").latent_shape == (4, 8, 8)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_prediction_types_convert_to_the_same_noise_and_loss(kind):
    """predict_noise returns ε for every prediction type (v -> sqrt(ᾱ) v + sqrt(1-ᾱ) x_t, x0 ->
    (x_t - sqrt(ᾱ) x0) / sqrt(1-ᾱ)), training_target is what the native output should be, and
    denoise_mse measures an ε difference in the native space."""
    from unlearnx.diffusion import denoise_mse
    from unlearnx.diffusion.training import noisy_latents

    torch.manual_seed(0)
    m = tiny_class_model(3, image_size=8, block_out_channels=(8, 16), prediction_type=kind)
    assert m.prediction_type == kind
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    t = torch.tensor([5, 200, 600, 990])
    x_t, t, eps = noisy_latents(m, x0, t)
    target = m.training_target(x0, eps, t)
    # A model whose native output is exactly its target predicts the true noise.
    m.model_output = lambda x, tt, emb: target
    assert torch.allclose(m.predict_noise(x_t, t, m.encode([0, 1, 2, 0])), eps, atol=2e-4)
    # And the native-space error of an ε perturbation is s_t times it.
    d = torch.randn_like(eps) * 1e-2
    a = m.alpha_bar(t, x0)
    scale = {"epsilon": torch.ones_like(a), "v_prediction": a.rsqrt(), "sample": ((1 - a) / a).sqrt()}[kind]
    assert torch.allclose(denoise_mse(m, eps + d, eps, t), (scale * d).pow(2).mean(), rtol=1e-5)


def test_v_prediction_trains_and_samples_and_rejects_unknown_types():
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    m = tiny_class_model(2, image_size=8, block_out_channels=(8, 16), prediction_type="v_prediction")
    x = torch.rand(16, 1, 8, 8)
    data = ConditionedImages(x, [i % 2 for i in range(16)])
    log = train_diffusion(m, data, steps=100, lr=3e-3, batch_size=8, seed=0)
    assert log["loss"][-1] < log["loss"][0]
    out = sample(m, [0, 1], steps=4)
    assert out.shape == (2, 1, 8, 8) and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="prediction_type"):
        tiny_class_model(2, image_size=8, block_out_channels=(8, 16), prediction_type="velocity")
    bad = DDPMScheduler(num_train_timesteps=10)
    bad.register_to_config(prediction_type="flow")
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionModel(m.unet, bad, num_classes=2)


@pytest.mark.parametrize("lora", [False, True])
def test_frozen_teacher_returns_noise_for_a_v_model(lora):
    """The teacher copy (full fine-tuning) and the disabled adapter (LoRA) both give ε, like predict_noise."""
    from unlearnx.diffusion.adapters import TrainableUNet

    torch.manual_seed(0)
    m = tiny_class_model(2, image_size=8, block_out_channels=(8, 16), prediction_type="v_prediction")
    tr = TrainableUNet(m, lora=lora, teacher=True)
    x_t, t, emb = torch.randn(3, 1, 8, 8), torch.tensor([10, 500, 900]), m.encode([0, 1, 2])
    assert torch.allclose(tr.teacher_noise(x_t, t, emb), m.predict_noise(x_t, t, emb), atol=1e-5)
    tr.finish()


def test_canvas_aliases_caption_half_the_images_with_other_words_for_the_same_images():
    from unlearnx.data.canvas import CANVAS_STYLE_ALIASES

    plain = canvas_dataset(n_per_pair=40, size=8, n_styles=3, n_objects=2, seed=5)
    a = canvas_dataset(n_per_pair=40, size=8, n_styles=3, n_objects=2, seed=5, aliases=2)
    assert torch.equal(a.images, plain.images)  # the captions have their own generator
    assert a.canonical().prompts == plain.prompts and a.prompts != plain.prompts
    canonical_share = sum(p == q for p, q in zip(a.prompts, plain.prompts)) / len(a)
    assert 0.35 < canonical_share < 0.65
    for p, q, s in zip(a.prompts, plain.prompts, a.style_ids.tolist()):
        style = a.styles[s]
        word = p.split()[-2]
        assert word == style or word in CANVAS_STYLE_ALIASES[style][:2]  # only the first k aliases
        assert p.replace(f" {word} ", f" {style} ") == q
    used = {p.split()[-2] for p in a.prompts}
    assert {"scarlet", "ruby"} <= used and "cherry" not in used
    f, _ = a.split_style("crimson")
    assert f.prompts == [p for p, s in zip(a.prompts, a.style_ids.tolist()) if s == 0]  # subsets keep captions
    assert set(f.canonical().prompts) == {"a circle in crimson style", "a square in crimson style"}
    assert canvas_dataset(n_per_pair=2, size=8, n_styles=2, n_objects=2, seed=5, aliases=1).prompts == \
        canvas_dataset(n_per_pair=2, size=8, n_styles=2, n_objects=2, seed=5, aliases=1).prompts
    for bad in (4, -1, 1.5, True):
        with pytest.raises(ValueError, match="aliases"):
            canvas_dataset(n_per_pair=2, size=8, aliases=bad)
