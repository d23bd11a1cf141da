"""GAN substrate (unlearnx.models.gan) and Adapt-then-Unlearn (unlearnx.methods.gan) on tiny cases."""
import math

import pytest
import torch

import unlearnx as ux
from unlearnx.data.datasets import digits_dataset
from unlearnx.eval.gan import fid_evaluator, gan_metrics
from unlearnx.methods import train_classifier
from unlearnx.methods.gan import (REPULSIONS, ewc_penalty, feedback_samples, generator_fisher, repulsion_loss,
                                  squared_distance)
from unlearnx.models import small_cnn
from unlearnx.models.gan import DCGAN, is_gan, sample_gan, train_gan

UNDESIRED = 0


@pytest.fixture(scope="module")
def setup():
    """Digits, an evaluator, an untrained and a briefly trained tiny DCGAN (a few CPU seconds)."""
    torch.set_num_threads(1)
    train, _ = digits_dataset(seed=0)
    x, y = train.tensors
    torch.manual_seed(0)
    clf = small_cnn(10, width=8)
    train_classifier(clf, train, epochs=8, lr=0.05, seed=0, progress=False)
    untrained = DCGAN(width=16, latent_dim=16, seed=0)
    gan = DCGAN(width=16, latent_dim=16, seed=0)
    train_gan(gan, x, steps=400, lr=5e-4, seed=0, progress=False)
    return {"x": x, "retain": x[y != UNDESIRED], "clf": clf, "untrained": untrained, "gan": gan}


def test_training_reduces_evaluator_fid(setup):
    before = fid_evaluator(setup["clf"], sample_gan(setup["untrained"], 500, seed=1), setup["x"])
    after = fid_evaluator(setup["clf"], sample_gan(setup["gan"], 500, seed=1), setup["x"])
    assert after < 0.5 * before


def test_sampling_is_deterministic_and_in_range(setup):
    a = sample_gan(setup["gan"], 50, seed=3)
    assert a.shape == (50, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, sample_gan(setup["gan"], 50, seed=3))
    assert not torch.equal(a, sample_gan(setup["gan"], 50, seed=4))
    assert is_gan(setup["gan"]) and not is_gan(setup["clf"])


def test_train_gan_is_deterministic_for_a_seed():
    x = torch.rand(32, 1, 8, 8)
    a, b = DCGAN(width=4, latent_dim=4, seed=1), DCGAN(width=4, latent_dim=4, seed=1)
    train_gan(a, x, steps=5, batch_size=8, seed=2, progress=False)
    train_gan(b, x, steps=5, batch_size=8, seed=2, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_train_gan_bad_input():
    with pytest.raises(TypeError, match="GAN bundle"):
        train_gan(torch.nn.Linear(2, 2), torch.rand(4, 1, 8, 8), steps=1)
    with pytest.raises(ValueError, match="steps"):
        train_gan(DCGAN(width=4, latent_dim=4), torch.rand(4, 1, 8, 8), steps=0)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        train_gan(DCGAN(width=4, latent_dim=4), torch.rand(4, 64), steps=1)


@pytest.mark.parametrize("kind", REPULSIONS)
def test_repulsion_values_and_gradients_match_their_formulas(kind):
    g = torch.Generator().manual_seed(0)
    theta = [torch.randn(3, 2, generator=g, dtype=torch.float64, requires_grad=True),
             torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)]
    anchor = [torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)]
    d = squared_distance(theta, anchor)
    flat = torch.cat([t.flatten() for t in theta]).detach()
    flat_n = torch.cat([t.flatten() for t in anchor])
    dv = float(((flat - flat_n) ** 2).sum())
    assert float(d.detach()) == pytest.approx(dv)
    alpha = 0.3
    value = repulsion_loss(d, kind, alpha=alpha)
    grads = torch.autograd.grad(value, theta)
    got = torch.cat([gr.flatten() for gr in grads])
    # closed forms: L(d) and dL/dθ = L'(d) · 2 (θ − θ_N)
    expected_value, dl_dd = {"el2": (math.exp(-alpha * dv), -alpha * math.exp(-alpha * dv)),
                             "il2": (1 / dv, -1 / dv ** 2),
                             "nl2": (-dv, -1.0)}[kind]
    assert float(value.detach()) == pytest.approx(expected_value)
    torch.testing.assert_close(got, dl_dd * 2 * (flat - flat_n))
    # every form decreases as θ moves away from θ_N along θ − θ_N (repulsion)
    far = repulsion_loss(squared_distance([t.detach() * 2 - a for t, a in zip(theta, anchor)], anchor), kind,
                         alpha=alpha)
    assert float(far) < float(value.detach())
    with pytest.raises(ValueError, match="repulsion"):
        repulsion_loss(d, "l1")


def test_ewc_penalty_and_fisher(setup):
    gan = setup["gan"]
    fisher = generator_fisher(gan, n=4, seed=0)
    params = list(gan.generator.parameters())
    assert [f.shape for f in fisher] == [p.shape for p in params]
    assert all((f >= 0).all() for f in fisher) and sum(float(f.sum()) for f in fisher) > 0
    anchor = [p.detach() + 0.1 for p in params]
    expected = 2.0 * sum(float((f * 0.01).sum()) for f in fisher)
    assert float(ewc_penalty(params, anchor, fisher, 2.0)) == pytest.approx(expected, rel=1e-4)


def test_method_registered_under_task_gan_with_validated_hparams():
    cls = ux.methods.get("adapt_unlearn", "gan")
    assert "adapt_unlearn" in ux.methods.available("gan") and cls.paper
    with pytest.raises(ValueError, match="repulsion"):
        cls(repulsion="l1")
    with pytest.raises(ValueError, match="distance_scale"):
        cls(distance_scale="max")
    with pytest.raises(ValueError, match="needs forget"):
        ux.unlearn(DCGAN(width=4, latent_dim=4), "adapt_unlearn", retain=torch.rand(4, 1, 8, 8))


def test_adapt_then_unlearn_removes_the_undesired_class(setup):
    gan, clf, retain = setup["gan"], setup["clf"], setup["retain"]
    before = gan_metrics(gan, clf, retain, UNDESIRED, n=1000, seed=7)
    neg, pos = feedback_samples(gan, clf, UNDESIRED, n=1000, seed=0)
    assert len(neg) > 20
    res = ux.unlearn(gan, "adapt_unlearn", forget=neg, retain=pos, adapt_steps=100, steps=200, lr=5e-4,
                     adapt_lr=5e-4, fisher_samples=8, seed=0, progress=False)
    assert res.method == "adapt_unlearn" and res.seconds > 0
    assert res.log["distance_adapted"] > 0 and res.log["distance_final"] > 0
    after = gan_metrics(res.model, clf, retain, UNDESIRED, n=1000, seed=7)
    # tiny-case bounds (the default-size numbers are in docs/benchmarks.md)
    assert after["undesired_share"] < 0.5 * before["undesired_share"]
    assert after["fid_eval"] < 1.5 * before["fid_eval"]
    # the caller's GAN is untouched (inplace=False)
    assert torch.equal(sample_gan(gan, 8, seed=1), sample_gan(setup["gan"], 8, seed=1))
    assert gan_metrics(gan, clf, retain, UNDESIRED, n=1000, seed=7) == before
