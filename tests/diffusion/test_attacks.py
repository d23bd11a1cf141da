"""Attacks on erased concepts, worst-case forget conditions and the robustness table (tiny models).

A model this small, trained for seconds, does not generate images an evaluator recognises, so the
directional tests measure each attack's own objective: the denoising loss of the concept's images
under the attacked conditioning at fixed (t, ε). A "weak erasure" is built by overwriting the
concept word's input embedding with another word's (the UNet still knows the concept): the loss
of the concept's images rises, and each attack must bring it back down. ASR-level mechanics are
tested with a brightness evaluator whose answer is known.
"""
import copy

import pytest
import torch
from torch import nn

from unlearnx.data.canvas import canvas_dataset
from unlearnx.diffusion import (ConditionedImages, diffusion_loss, sample, tiny_class_model, tiny_text_model,
                                train_diffusion)
from unlearnx.diffusion import attacks as A
from unlearnx.diffusion.worst_case import worst_case_forget_conditions
from unlearnx.eval.diffusion_robustness import robustness_markdown, robustness_table

FAST = {"steps": 2, "guidance_scale": 3.0}


class Brightness(nn.Module):
    """Evaluator: class 1 = mean pixel above `thr`, class 0 otherwise."""

    def __init__(self, thr):
        super().__init__()
        self.thr = thr
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b = x.mean((1, 2, 3)) - self.thr
        return torch.stack([-b, b], 1) * 50


@pytest.fixture(scope="module")
def canvas():
    return canvas_dataset(n_per_pair=4, size=8, n_styles=3, n_objects=3, seed=0)


@pytest.fixture(scope="module")
def text_pair(canvas):
    torch.manual_seed(0)
    dm = tiny_text_model(canvas.prompts, image_size=8, block_out_channels=(16, 32), text_dim=16, text_layers=1,
                         max_length=10)
    train_diffusion(dm, canvas, steps=10, lr=3e-3, batch_size=16, warmup=5, seed=0)
    weak = copy.deepcopy(dm)
    tok = weak.tokenizer
    table = weak.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[tok.convert_tokens_to_ids("ocean")] = table[tok.convert_tokens_to_ids("crimson")]
    return dm, weak


def _fixed(images, reps=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = images.repeat(reps, 1, 1, 1)
    return x, torch.randint(20, 900, (len(x),), generator=g), torch.randn(x.shape, generator=g), reps


@torch.no_grad()
def loss_under(model, images, prompts, encoding=None):
    x, t, n, reps = _fixed(images)
    prompts = list(prompts) * reps
    if encoding is None:
        return float(diffusion_loss(model, x, prompts, t=t, noise=n).mean())
    return float(diffusion_loss(model, x, prompts, t=t, noise=n, emb=encoding.repeat(reps, 1, 1)).mean())


def test_concept_inversion_and_soft_prompt_put_their_embeddings_in_the_right_slots(text_pair, canvas):
    # Directional effect is tested on the class model below: a text model trained for the seconds a
    # test affords does not use its prompt yet (loss under the prompt == under ""), see the docs.
    _, weak = text_pair
    f, _ = canvas.split_style("ocean")
    res = A.concept_inversion(weak, Brightness(0.5), 1, f.images, f.prompts, "ocean", steps=5, lr=0.05,
                              n_per_condition=1, sample_kw=FAST)
    assert res.embeddings.shape == (1, 16) and len(res.log["runs"][0]["loss"]) == 5 and res.n == 3
    with torch.no_grad():
        plain = weak.encode(f.prompts)
        inv = A.encode_replacing(weak, f.prompts, "ocean", res.embeddings[0] + 1.0)
        pos = weak.tokenize(f.prompts)[0].tolist().index(weak.tokenizer.convert_tokens_to_ids("ocean"))
        # causal text encoder: positions before the replaced word are unchanged, the word's own changes
        assert torch.allclose(inv[:, :pos], plain[:, :pos], atol=1e-6)
        assert not torch.allclose(inv[:, pos], plain[:, pos], atol=1e-3)
    soft = A.soft_prompt_attack(weak, Brightness(0.5), 1, f.images, f.prompts, k=2, steps=5, lr=0.05,
                                n_per_condition=2, seeds=(0, 1), sample_kw=FAST)
    assert soft.embeddings.shape == (2, 2, 16) and soft.n == 2 * 3 * 2
    with torch.no_grad():
        enc = A.encode_prefixed(weak, f.prompts, soft.embeddings[0])
    assert torch.allclose(enc[:, 0], plain[:, 0], atol=1e-6) and not torch.allclose(enc[:, 1], plain[:, 1])
    with pytest.raises(ValueError, match="one vocabulary token"):
        A.concept_inversion(weak, Brightness(0.5), 1, f.images, f.prompts, "zebra", steps=1, sample_kw=FAST)


def test_concept_inversion_step_is_relative_to_the_embedding_scale(text_pair, canvas):
    # Default lr = INVERSION_RELATIVE_LR x RMS(token embeddings): the vector stays within a few word
    # norms of its start over the whole run, where an absolute 0.05 throws it far away (measured on the
    # benchmark: 16 word norms, ASR 6 % on a model that renders the concept from its plain prompt).
    _, weak = text_pair
    f, _ = canvas.split_style("ocean")
    table = weak.text_encoder.get_input_embeddings().weight.detach()
    word = table[weak.tokenizer.convert_tokens_to_ids("ocean")]
    res = A.concept_inversion(weak, Brightness(0.5), 1, f.images, f.prompts, "ocean", steps=20,
                              n_per_condition=1, sample_kw=FAST)
    assert res.log["lr"] == pytest.approx(A.INVERSION_RELATIVE_LR * float(table.pow(2).mean().sqrt()))
    big = A.concept_inversion(weak, Brightness(0.5), 1, f.images, f.prompts, "ocean", steps=20, lr=0.05,
                              n_per_condition=1, sample_kw=FAST)
    drift, big_drift = (res.embeddings[0] - word).norm(), (big.embeddings[0] - word).norm()
    assert drift < 2.0 * word.norm() < big_drift, (drift, big_drift, word.norm())
    with pytest.raises(ValueError, match="lr"):
        A.concept_inversion(weak, Brightness(0.5), 1, f.images, f.prompts, "ocean", steps=1, lr=0.0, sample_kw=FAST)


def test_unlearndiff_projects_to_real_vocabulary_tokens(text_pair, canvas):
    _, weak = text_pair
    f, _ = canvas.split_style("ocean")
    res = A.unlearndiff_attack(weak, Brightness(0.5), 1, f.images, f.prompts, k=2, steps=30, lr=0.1,
                               n_per_condition=1, sample_kw=FAST)
    vocab = set(weak.tokenizer.get_vocab())
    special = {"<pad>", "<bos>", "<eos>", "<unk>"}
    tokens = res.log["runs"][0]["tokens"]
    ids_vocab, _ = A.vocabulary_embeddings(weak)
    assert set(tokens) <= set(ids_vocab.tolist())
    for p in res.prompts:
        words = p.split()
        assert set(words) <= vocab - special
        # the prompt is a real token sequence: it tokenizes back to the chosen ids
        assert weak.tokenize([p])[0, 1:3].tolist() == tokens
    # nearest_tokens: every projected id is a real, non-special vocabulary id
    got = A.nearest_tokens(weak, torch.randn(5, 16) * 3)
    assert set(got.tolist()) <= set(ids_vocab.tolist())


def test_gcg_and_random_tokens_return_real_prompts(text_pair, canvas):
    _, weak = text_pair
    f, _ = canvas.split_style("ocean")
    vocab = set(weak.tokenizer.get_vocab())
    g = A.gcg_prompt_attack(weak, Brightness(0.5), 1, f.images, f.prompts, k=2, steps=3, candidates=4,
                            n_per_condition=1, sample_kw=FAST)
    losses = g.log["runs"][0]["loss"]
    assert len(losses) == 3 and all(w in vocab for p in g.prompts for w in p.split())
    r = A.random_token_attack(weak, Brightness(0.5), 1, f.prompts, k=2, trials=2, sample_kw=FAST)
    assert r.n == 2 * 3 and all(len(p.split()) == 2 + 5 for p in r.prompts)
    with pytest.raises(ValueError, match="do not fit"):
        A.random_token_attack(weak, Brightness(0.5), 1, f.prompts, k=5, trials=1, sample_kw=FAST)


def test_seed_search_raises_asr_monotonically_with_budget():
    torch.manual_seed(0)
    dm = tiny_class_model(2, image_size=8, block_out_channels=(8, 16))
    # threshold at the median brightness of plain generations: about half are "the concept"
    plain = sample(dm, [0] * 16, steps=2, seed=0)
    thr = float(plain.mean((1, 2, 3)).median())
    ev = Brightness(thr)
    one = A.seed_search(dm, ev, 1, [0], budget=1, n_per_condition=16, sample_kw=FAST)
    six = A.seed_search(dm, ev, 1, [0], budget=6, n_per_condition=16, sample_kw=FAST)
    assert six.asr >= one.asr and six.asr > 50.0, (one.asr, six.asr)


def test_class_embedding_attack_recovers_a_swapped_class():
    from unlearnx.data.canvas import digits_upscaled

    train, _ = digits_upscaled(size=8)
    x, y = train.tensors
    keep = y < 4
    data = ConditionedImages(x[keep][:160], y[keep][:160])
    torch.manual_seed(0)
    dm = tiny_class_model(4, image_size=8, block_out_channels=(16, 32), channels=1)
    train_diffusion(dm, data, steps=60, lr=3e-3, batch_size=32, warmup=5, seed=0)
    weak = copy.deepcopy(dm)
    with torch.no_grad():
        weak.unet.class_embedding.weight[1] = weak.unet.class_embedding.weight[3]
    ones = data.images[torch.tensor(data.conditions) == 1][:16]
    base, erased = loss_under(dm, ones, [1] * len(ones)), loss_under(weak, ones, [1] * len(ones))
    assert erased > base, (base, erased)
    res = A.class_embedding_attack(weak, Brightness(0.5), 1, ones, steps=40, lr=0.05, n_per_condition=2,
                                   sample_kw=FAST)
    with A.class_embedding_override(weak, 1, res.embeddings[0]):
        attacked = loss_under(weak, ones, [1] * len(ones))
    assert attacked < erased - 0.5 * (erased - base), (base, erased, attacked)
    weak.unet.requires_grad_(False)  # a frozen (e.g. reloaded) model: the attacker still fine-tunes every weight
    rel = A.relearning_probe(weak, Brightness(0.5), 1, ConditionedImages(ones, [1] * len(ones)), [1],
                             steps=(0, 2), n_per_condition=2, sample_kw=FAST)
    assert [s for s, _ in rel.curve] == [0, 2]
    assert not any(p.requires_grad for p in weak.unet.parameters())  # on a copy: the model is left as it was


def test_worst_case_selects_the_easy_conditions_not_random():
    g = torch.Generator().manual_seed(0)
    # 4 classes: 0 and 2 are one constant image each (trivially denoised), 1 and 3 are pure noise
    imgs, labels = [], []
    for c in range(4):
        for _ in range(8):
            imgs.append(torch.full((1, 8, 8), 0.5) if c in (0, 2) else torch.rand(1, 8, 8, generator=g))
            labels.append(c)
    images = torch.stack(imgs)
    torch.manual_seed(0)
    dm = tiny_class_model(4, image_size=8, block_out_channels=(8, 16))
    train_diffusion(dm, ConditionedImages(images, labels), steps=40, lr=3e-3, batch_size=16, warmup=5, seed=0)
    chosen, w = worst_case_forget_conditions(dm, images, labels, 2, outer_steps=3, inner_steps=5, w_lr=0.5)
    assert chosen == [0, 2], (chosen, w)
    assert abs(float(w.sum()) - 2.0) < 1e-6 and bool(((w >= 0) & (w <= 1)).all())
    with pytest.raises(ValueError, match="m must be"):
        worst_case_forget_conditions(dm, images, labels, 4)


def test_robustness_table_rows_and_markdown():
    torch.manual_seed(0)
    dm = tiny_class_model(2, image_size=8, block_out_channels=(8, 16))
    imgs = torch.rand(4, 1, 8, 8)
    table = robustness_table({"a": dm}, Brightness(0.5), 1, target_images=imgs, target_conditions=[0],
                             forget=ConditionedImages(imgs, [0] * 4),
                             attacks={"seed_search": {"budget": 2, "n_per_condition": 2},
                                      "relearning": {"steps": (0, 1), "n_per_condition": 2}},
                             seeds=(0, 1), sample_kw=FAST)
    row = table["a"]
    assert set(row["asr"]) == {"none", "seed_search", "relearning"}
    assert row["ua"] == pytest.approx(100.0 - row["asr"]["none"])
    assert [s for s, _ in row["relearning_curve"]] == [0, 1]
    assert "| a |" in robustness_markdown(table)
    with pytest.raises(ValueError, match="does not apply"):
        robustness_table({"a": dm}, Brightness(0.5), 1, target_images=imgs, target_conditions=[0],
                         attacks={"unlearndiff": {}}, sample_kw=FAST)


@pytest.mark.parametrize("train", ["text_encoder", "unet"])
def test_advunlearn_trains_the_chosen_part_and_the_text_encoder_is_a_plug_in(text_pair, canvas, tmp_path, train):
    import unlearnx as ux
    from unlearnx.methods.diffusion.advunlearn import load_text_encoder, save_text_encoder

    dm, _ = text_pair
    f, r = canvas.split_style("ocean")
    res = ux.unlearn(copy.deepcopy(dm), "advunlearn", forget=f, retain=r, iterations=3, attack_steps=2,
                     ddim_steps=4, batch_size=2, train=train, seed=0)
    m = res.model
    te_changed = any(not torch.equal(a, b) for a, b in zip(m.text_encoder.parameters(), dm.text_encoder.parameters()))
    unet_changed = any(not torch.equal(a, b) for a, b in zip(m.unet.parameters(), dm.unet.parameters()))
    assert (te_changed, unet_changed) == ((True, False) if train == "text_encoder" else (False, True))
    assert not any(p.requires_grad for p in m.text_encoder.parameters())
    assert len(res.log["loss_u"]) == 3 and len(res.log["attack_loss"]) == 3
    if train == "text_encoder":
        path = tmp_path / "te.safetensors"
        save_text_encoder(m, path)
        other = copy.deepcopy(dm)
        load_text_encoder(other, path)
        with torch.no_grad():
            assert torch.equal(other.encode(f.prompts), m.encode(f.prompts))
        with pytest.raises(FileNotFoundError):
            load_text_encoder(other, tmp_path / "missing.safetensors")
