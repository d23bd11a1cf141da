"""unlearnx.eval.gan: Fréchet distance, k-NN precision/recall, undesired share (no GAN training here)."""
import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from unlearnx.eval.gan import evaluator_features, frechet_distance, precision_recall, undesired_mask, undesired_share


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, size=(20000, 3))
    b = rng.normal(1.0, 2.0, size=(20000, 3))
    # ‖μa − μb‖² + Σ (σa² + σb² − 2 σa σb) = 3·1 + 3·(1 + 4 − 4) = 6 for the true Gaussians
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    expected = diff @ diff + np.trace(sa) + np.trace(sb) - 2 * np.trace(np.real(linalg.sqrtm(sa @ sb)))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)
    assert abs(frechet_distance(a, a)) < 1e-6


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same F"):
        frechet_distance(np.zeros((5, 2)), np.zeros((5, 3)))


def test_precision_recall_follows_the_knn_ball_definition():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    # k=1 radii of real: 1 each. fake 0.5 and 2.9 lie in a real ball, 10 does not -> precision 2/3.
    fake = torch.tensor([[0.5], [2.9], [10.0]])
    # k=1 radii of fake: 0.5 -> 2.4, 2.9 -> 2.4, 10 -> 7.1; real 0..3 all within 2.4 of 0.5 or 2.9 -> recall 1.
    p, r = precision_recall(real, fake, k=1)
    assert p == pytest.approx(2 / 3)
    assert r == pytest.approx(1.0)
    # a far-away tight fake cluster: precision 0 and recall 0
    p, r = precision_recall(real, torch.tensor([[50.0], [50.1], [50.2]]), k=1)
    assert (p, r) == (0.0, 0.0)
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(real, fake, k=3)


def test_precision_recall_mode_collapse_keeps_precision_drops_recall():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 2, generator=g)
    collapsed = 0.05 * torch.randn(400, 2, generator=g)    # all mass near the mode
    p, r = precision_recall(real, collapsed, k=3)
    p_full, r_full = precision_recall(real, torch.randn(400, 2, generator=g), k=3)
    assert p > 0.9 and r < 0.2
    assert r_full > 0.8


def test_undesired_share_and_features_of_a_fixed_classifier():
    clf = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        clf[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]))
        clf[1].bias.zero_()
    images = torch.eye(4)[[0, 0, 1, 2]].view(4, 1, 2, 2)         # classes 0, 0, 1, 2
    assert undesired_mask(clf, images, 0).tolist() == [True, True, False, False]
    assert undesired_share(clf, images, [1, 2]) == 0.5
    assert torch.equal(evaluator_features(clf, images), images.flatten(1).double())
    with pytest.raises(ValueError, match="undesired"):
        undesired_share(clf, images, 5)
    with pytest.raises(ValueError, match="undesired"):
        undesired_share(clf, images, "zero")
