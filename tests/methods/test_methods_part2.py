"""SalUn, SalUn-soft, SSD, LFSSD, Fisher forgetting, IU, OMP prune-first and the worst-case forget set.

Effect tests run class-wise forgetting on digits against Retrain on the same split (bounds from
measured runs with margins); the exactness tests recompute each method's equation independently.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import unlearnx as ux
from unlearnx.data import class_forget, random_forget, worst_case_forget
from unlearnx.eval.classification import model_outputs
from unlearnx.methods import ssd as ssd_mod
from unlearnx.methods import train_classifier
from unlearnx.methods.fisher_forgetting import fisher_noise_std
from unlearnx.methods.influence import woodfisher_inverse_hvp
from unlearnx.methods.masking import magnitude_prune
from unlearnx.methods.presets import DIGITS_CLASSWISE_HPARAMS
from unlearnx.methods.salun import saliency_masks
from unlearnx.methods.training import union_loader
from unlearnx.models import small_cnn
from unlearnx.ops import ssd_dampen_reference

# The measured digits overrides, and prune-first followed by SalUn.
DIGITS_HPARAMS = {**DIGITS_CLASSWISE_HPARAMS, "prune_first": {"then": "salun"}}
# method -> (min UA, max RA drop, max TA drop) in points, from measured class-wise runs
# (UA / RA / TA: SalUn 100/99.4/97.2, SSD 100/99.9/97.8, LFSSD 100/96.1/95.7, FF 90/87.6/86.7,
# IU 100/95.4/92.9, prune-first+SalUn 96/97.9/94.8, SalUn-soft 8/100/98.8; original 0/100/98.5).
BOUNDS = {"salun": (90.0, 3.0, 4.0), "ssd": (90.0, 3.0, 4.0), "lfssd": (90.0, 7.0, 7.0),
          "fisher": (70.0, 20.0, 20.0), "influence": (90.0, 8.0, 10.0), "prune_first": (85.0, 5.0, 7.0),
          "salun_soft": (4.0, 2.0, 3.0)}


@pytest.fixture(scope="module")
def small(digits):
    """A quickly trained width-8 CNN and a class-wise split, for the exactness tests."""
    torch.set_num_threads(1)
    scenario = class_forget(*digits, classes=3)
    torch.manual_seed(0)
    model = small_cnn(width=8)
    train_classifier(model, scenario.train, epochs=3, lr=0.05, seed=0, progress=False)
    return scenario, model


@pytest.mark.parametrize("name", list(BOUNDS))
def test_classwise_moves_towards_retrain(classwise, name):
    scenario, model, orig, ref = classwise
    res = ux.unlearn(model, name, forget=scenario.forget, retain=scenario.retain, seed=0, progress=False,
                     **DIGITS_HPARAMS.get(name, {}))
    m = ux.evaluate(res.model, scenario=scenario, reference=ref)
    min_ua, ra_drop, ta_drop = BOUNDS[name]
    assert m["UA"] >= min_ua, m
    assert m["Avg.Gap"] < ux.eval.avg_gap(orig, ref) - 2.0, m
    assert m["RA"] >= orig["RA"] - ra_drop and m["TA"] >= orig["TA"] - ta_drop, m


def _forget_loader(scenario, batch_size=64):
    return DataLoader(scenario.forget, batch_size=batch_size, shuffle=False)


def test_salun_mask_is_the_global_top_half_by_sorting(small):
    scenario, model = small
    loader = _forget_loader(scenario)
    masks = saliency_masks(model, loader, mask_ratio=0.5)
    # Independent saliency: |Σ_batches ∇ mean CE| in eval mode, then sort all entries together.
    probe = copy.deepcopy(model).eval()
    names = [n for n, _ in probe.named_parameters()]
    total = [torch.zeros_like(p) for p in probe.parameters()]
    for x, y in loader:
        for t, g in zip(total, torch.autograd.grad(F.cross_entropy(probe(x), y), list(probe.parameters()))):
            t += g
    flat = torch.cat([t.abs().reshape(-1) for t in total])
    k = math.floor(0.5 * flat.numel())
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
    got = torch.cat([masks[n].reshape(-1) for n in names])
    assert int(got.sum()) == k
    assert torch.equal(got, keep)


def test_salun_masked_weights_are_bit_identical(small):
    scenario, model = small
    loader = _forget_loader(scenario)
    masks = saliency_masks(model, loader, mask_ratio=0.5)
    res = ux.unlearn(model, "salun", forget=loader, retain=scenario.retain, epochs=2, seed=0, progress=False)
    changed = 0
    for (name, before), after in zip(model.named_parameters(), res.model.parameters()):
        frozen = ~masks[name]
        assert torch.equal(after[frozen], before[frozen]), name  # bit for bit, despite momentum and wd
        changed += int((after[masks[name]] != before[masks[name]]).sum())
    assert changed > 0.4 * sum(int(m.sum()) for m in masks.values())
    assert res.log["mask_fraction"] == pytest.approx(0.5, abs=1e-4)


def test_salun_soft_keeps_only_the_final_budget(small):
    scenario, model = small
    res = ux.unlearn(model, "salun_soft", forget=scenario.forget, retain=scenario.retain, epochs=1, seed=0,
                     progress=False)
    steps = math.ceil(len(scenario.forget) / 64) + math.ceil(len(scenario.retain) / 64)
    P = sum(p.numel() for p in model.parameters())
    budget = math.floor(0.5 * 1 / steps * P)  # k of the last step: r · (1/T) · P
    changed = sum(int((a != b).sum()) for a, b in zip(model.parameters(), res.model.parameters()))
    assert 0 < changed <= budget


def _plain_importance(model, loader):
    """(1/M) Σ_m (∇ mean_m CE)² by a plain autograd loop, eval mode."""
    probe = copy.deepcopy(model).eval()
    acc = {n: torch.zeros_like(p) for n, p in probe.named_parameters()}
    batches = 0
    for x, y in loader:
        grads = torch.autograd.grad(F.cross_entropy(probe(x), y), list(probe.parameters()))
        for (n, _), g in zip(probe.named_parameters(), grads):
            acc[n] += g * g
        batches += 1
    return {n: t / batches for n, t in acc.items()}


def test_ssd_equals_the_reference_formula(small):
    scenario, model = small
    ssd_mod.clear_importance_cache()
    forget = _forget_loader(scenario, 128)
    res = ux.unlearn(model, "ssd", forget=forget, retain=scenario.retain, seed=3, progress=False)
    assert res.log["full_importance_cached"] is False and res.log["dampened"] > 0
    i_f = _plain_importance(model, forget)
    i_d = _plain_importance(model, union_loader(scenario.forget, scenario.retain, batch_size=128, seed=3))
    used_d, cached = ssd_mod.full_importance(model, scenario.forget, scenario.retain, batch_size=128, seed=3)
    assert cached
    used_f = ssd_mod.forget_importance(model, forget)
    for n in i_f:
        torch.testing.assert_close(used_f[n], i_f[n], rtol=1e-4, atol=1e-10)
        torch.testing.assert_close(used_d[n], i_d[n], rtol=1e-4, atol=1e-10)
    names = list(i_f)
    expected = [p.detach().clone() for p in model.parameters()]
    ssd_dampen_reference(expected, [used_f[n] for n in names], [used_d[n] for n in names], 10.0, 1.0)
    for n, p, q, exp in zip(names, model.parameters(), res.model.parameters(), expected):
        assert torch.equal(q, exp), n  # bit-identical to the per-tensor reference
        sel = i_f[n] > 10.0 * i_d[n]
        direct = torch.where(sel, p * torch.clamp(i_d[n] / i_f[n], max=1.0), p)
        torch.testing.assert_close(q, direct, rtol=1e-5, atol=1e-7)


def test_ssd_full_importance_is_cached_per_model_and_data(small, digits):
    scenario, model = small
    ssd_mod.clear_importance_cache()
    kw = {"forget": scenario.forget, "retain": scenario.retain, "seed": 0, "progress": False}
    first = ux.unlearn(model, "ssd", **kw)
    second = ux.unlearn(model, "ssd", **kw)
    assert not first.log["full_importance_cached"] and second.log["full_importance_cached"]
    assert all(torch.equal(a, b) for a, b in zip(first.model.parameters(), second.model.parameters()))
    assert not ux.unlearn(first.model, "ssd", **kw).log["full_importance_cached"]  # other weights
    other = class_forget(*digits, classes=4)
    assert not ux.unlearn(model, "ssd", forget=other.forget, retain=other.retain, seed=0,
                          progress=False).log["full_importance_cached"]
    assert not ux.unlearn(model, "ssd", cache=False, **kw).log["full_importance_cached"]


def test_lfssd_importance_matches_the_linear_closed_form():
    # f(x) = Wx: ∇_W mean_i ‖Wx_i‖² = (2/B) W Σ_i x_i x_iᵀ; importance = mean over batches of its |.|.
    torch.manual_seed(0)
    model = nn.Linear(5, 3, bias=False)
    x = torch.randn(10, 5)
    loader = DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(10, dtype=torch.long)), batch_size=4)
    got = ssd_mod.forget_importance(model, loader, loss="output_norm")["weight"]
    W = model.weight.detach()
    parts = [(2.0 / len(xb)) * W @ (xb.T @ xb) for xb in x.split(4)]
    torch.testing.assert_close(got, sum(p.abs() for p in parts) / len(parts))


def _mlp_on_digits(digits):
    # Digits' first pixel is always 0: the first layer's weights on it get exactly zero gradient.
    train, test = digits
    flat = torch.utils.data.TensorDataset(train.tensors[0].flatten(1), train.tensors[1])
    assert float(train.tensors[0].flatten(1)[:, 0].abs().max()) == 0.0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    train_classifier(model, flat, epochs=2, lr=0.05, seed=0, progress=False)
    forget = torch.utils.data.Subset(flat, list(range(50)))
    retain = torch.utils.data.Subset(flat, list(range(50, len(flat))))
    return model, forget, retain


def test_fisher_forgetting_formula_and_zero_fisher(digits):
    model, forget, retain = _mlp_on_digits(digits)
    res = ux.unlearn(model, "fisher", retain=retain, seed=7, progress=False, alpha=1e-6, max_std=0.01)
    assert res.log["zero_fisher_fraction"] > 0
    fisher = ux.stats.fisher_diagonal(model, DataLoader(retain, batch_size=64), mode="per_sample", progress=False)
    assert float(fisher["0.weight"][:, 0].abs().max()) == 0.0
    gen = torch.Generator().manual_seed(7)
    for (name, before), after in zip(model.named_parameters(), res.model.parameters()):
        assert torch.isfinite(after).all(), name
        f = fisher[name]
        std = torch.where(f > 0, torch.sqrt(1e-6 / f), torch.full_like(f, math.inf)).clamp(max=0.01)
        noise = torch.randn(before.shape, generator=gen)
        torch.testing.assert_close(after - before, std * noise, rtol=1e-4, atol=1e-7)
    assert torch.equal(fisher_noise_std(torch.zeros(3), alpha=0.0, max_std=1e-3), torch.zeros(3))
    assert torch.equal(fisher_noise_std(torch.zeros(3), alpha=1e-6, max_std=1e-3), torch.full((3,), 1e-3))
    with pytest.raises(ValueError, match="fisher"):
        fisher_noise_std(torch.tensor([float("nan")]), alpha=1e-6, max_std=1e-3)


def test_woodfisher_equals_sequential_sherman_morrison_and_dense_solve():
    torch.manual_seed(0)
    G, v, lam = torch.randn(7, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64), 0.3
    N = len(G)
    Hinv = torch.eye(5, dtype=torch.float64) / lam
    for g in G:  # H_n = H_{n-1} + g gᵀ / N, Sherman–Morrison one sample at a time
        u = Hinv @ g
        Hinv = Hinv - torch.outer(u, u) / (N + g @ u)
    got = woodfisher_inverse_hvp(G, v, damping=lam)
    torch.testing.assert_close(got, Hinv @ v)
    torch.testing.assert_close(got, torch.linalg.solve(lam * torch.eye(5, dtype=torch.float64) + G.T @ G / N, v))


def test_influence_has_no_nan_with_zero_gradients(digits):
    model, forget, retain = _mlp_on_digits(digits)
    res = ux.unlearn(model, "influence", forget=forget, retain=retain, seed=0, progress=False, num_samples=200)
    before = dict(model.named_parameters())
    for name, p in res.model.named_parameters():
        assert torch.isfinite(p).all(), name
    # zero-gradient coordinates (pixel 0's weights) get a zero step: v and every g vanish there
    assert torch.equal(res.model[0].weight[:, 0], before["0.weight"][:, 0])
    assert res.log["step_norm"] > 0 and res.log["num_samples"] == 200


@pytest.mark.parametrize("then", ["ft", "salun", "boundary_expand"])
def test_prune_first_keeps_pruned_weights_exactly_zero(small, then):
    scenario, model = small
    masks = magnitude_prune(copy.deepcopy(model), 0.95)
    res = ux.unlearn(model, "prune_first", forget=scenario.forget, retain=scenario.retain, seed=0, progress=False,
                     prune_epochs=1, then=then, then_hparams={"epochs": 1, "lr": 0.01})
    params = dict(res.model.named_parameters())
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(0.95 * sum(m.numel() for m in masks.values()))
    for name, m in masks.items():
        assert torch.equal(params[name][~m], torch.zeros(int((~m).sum()))), name
    kept_moved = sum(int((params[n][m] != dict(model.named_parameters())[n][m]).sum()) for n, m in masks.items())
    assert kept_moved > 0
    assert res.log["sparsity"] == pytest.approx(0.95, abs=1e-3) and res.log["then_seconds"] > 0


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="mask_ratio"):
        ux.methods.get("salun")(mask_ratio=0.0)
    with pytest.raises(ValueError, match="then"):
        ux.methods.get("prune_first")(then="retrain")
    with pytest.raises(ValueError, match="not a registered method"):
        ux.methods.get("prune_first")(then="nope")
    with pytest.raises(TypeError, match="lrr"):
        ux.methods.get("prune_first")(then="ft", then_hparams={"lrr": 0.1})
    with pytest.raises(ValueError, match="sparsity"):
        ux.methods.get("prune_first")(sparsity=1.0)
    with pytest.raises(ValueError, match="num_samples"):
        ux.methods.get("influence")(num_samples=0)
    with pytest.raises(ValueError, match="damping"):
        ux.methods.get("influence")(damping=0.0)
    with pytest.raises(ValueError, match="loss"):
        ssd_mod.forget_importance(nn.Linear(2, 2), [], loss="ce")


def test_worst_case_forget_set_stays_fitted_after_unlearning(digits):
    # The defining property: after unlearning it, the worst-case set keeps a lower loss than
    # random sets of the same size (measured: ~3e-6 vs 2e-3..5e-3 after 3 epochs of FT).
    train, test = digits
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = small_cnn(width=16)
    train_classifier(model, train, epochs=10, lr=0.05, seed=0, progress=False)
    wc = worst_case_forget(train, test, model=model, fraction=0.1, seed=0, progress=False)
    m = round(0.1 * len(train))
    assert len(wc.forget_indices) == m == len(wc.forget_indices.unique())
    assert len(wc.retain) == len(train) - m
    assert float(wc.meta["weights"].sum()) == pytest.approx(m, rel=1e-9)

    def forget_loss_after_ft(scenario):
        res = ux.unlearn(model, "ft", retain=scenario.retain, seed=0, progress=False, epochs=3)
        logits, y = model_outputs(res.model, scenario.forget)
        return float(F.cross_entropy(logits, y))

    worst = forget_loss_after_ft(wc)
    for s in range(2):
        assert worst < 0.5 * forget_loss_after_ft(random_forget(train, test, fraction=0.1, seed=s))
    with pytest.raises(ValueError, match="fraction or n"):
        worst_case_forget(train, test, model=model, progress=False)
    with pytest.raises(ValueError, match="outer_steps"):
        worst_case_forget(train, test, model=model, n=5, outer_steps=0, progress=False)
