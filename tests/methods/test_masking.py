import math

import pytest
import torch
from torch import nn

from unlearnx.methods.masking import (
    MaskedOptimizer,
    global_topk_masks,
    keep_topk_delta_,
    magnitude_prune,
    masks_by_param,
)


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)


def salun_double_argsort(scores: dict, r: float) -> dict:
    """SalUn's reference mask (generate_mask.py): two full argsorts of the negated concatenation."""
    all_elements = -torch.cat([t.flatten() for t in scores.values()])
    threshold_index = int(len(all_elements) * r)
    positions = torch.argsort(all_elements)
    ranks = torch.argsort(positions)
    out, start = {}, 0
    for key, t in scores.items():
        n = t.numel()
        out[key] = (ranks[start:start + n] < threshold_index).reshape(t.shape)
        start += n
    return out


def test_global_topk_masks_equal_salun_reference_without_ties():
    g = torch.Generator().manual_seed(0)
    scores = {f"layer{i}.weight": torch.rand(s, generator=g) for i, s in enumerate([(8, 3, 3, 3), (10, 288), (10,)])}
    for r in (0.5, 0.1, 0.95):
        ours = global_topk_masks(scores, r)
        ref = salun_double_argsort(scores, r)
        assert list(ours) == list(scores)
        assert all(torch.equal(ours[k], ref[k]) for k in scores)
        total = sum(t.numel() for t in scores.values())
        assert sum(int(m.sum()) for m in ours.values()) == math.floor(r * total)


def test_global_topk_masks_ties_and_edges():
    scores = {"a": torch.zeros(5), "b": torch.ones(3), "c": torch.zeros(4)}
    m = global_topk_masks(scores, 0.5)  # k = 6: the 3 ones, then the first 3 zeros (in "a")
    assert m["b"].all() and m["a"].tolist() == [True, True, True, False, False] and not m["c"].any()
    assert sum(int(v.sum()) for v in global_topk_masks(scores, 0.5, ties="all").values()) == 12
    assert not any(v.any() for v in global_topk_masks(scores, 0.0).values())
    assert all(v.all() for v in global_topk_masks(scores, 1.0).values())
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        global_topk_masks(scores, 1.5)
    with pytest.raises((RuntimeError, ValueError), match=r"scores\['b'\] contains NaN"):
        global_topk_masks({"a": torch.ones(3), "b": torch.tensor([float("nan")])}, 0.5)


def train(model, opt, steps):
    loss_fn = nn.CrossEntropyLoss()
    for s in range(steps):
        x, y = batch(s)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-4),
    ],
    ids=["adamw", "sgd_momentum_wd"],
)
def test_masked_coordinates_bit_identical_after_100_steps(make_opt):
    model = small_model()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in model.named_parameters()}
    opt = MaskedOptimizer(make_opt(model.parameters()), masks_by_param(model, masks))
    train(model, opt, 100)
    for n, p in model.named_parameters():
        m = masks[n]
        assert torch.equal(p[~m].view(torch.int32), theta0[n][~m].view(torch.int32)), n  # bit-identical
        assert (p[m] != theta0[n][m]).float().mean() > 0.9, n  # the trainable part did train
        for key, st in opt.state[p].items():
            if key != "step":
                assert (st[~m] == 0).all(), (n, key)

    # control: masking the gradients alone (SalUn's original code) lets decay/momentum move them
    model2 = small_model()
    opt2 = make_opt(model2.parameters())
    loss_fn = nn.CrossEntropyLoss()
    for s in range(5):
        x, y = batch(s)
        opt2.zero_grad()
        loss_fn(model2(x), y).backward()
        for n, p in model2.named_parameters():
            p.grad *= masks[n]
        opt2.step()
    moved = sum(int((p[~masks[n]] != theta0[n][~masks[n]]).sum()) for n, p in model2.named_parameters())
    assert moved > 0


def test_masked_optimizer_works_with_lr_scheduler_and_state_dict():
    model = small_model()
    masks = {p: torch.rand(p.shape) < 0.5 for p in model.parameters()}
    opt = MaskedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), masks)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train(model, opt, 2)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    sd = opt.state_dict()
    assert "state" in sd and len(sd["state"]) == 4
    with pytest.raises(ValueError, match="masks has 1 entries but the optimizer has 4 parameters"):
        MaskedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [torch.ones(1, dtype=torch.bool)])
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        MaskedOptimizer(object(), masks)


def test_magnitude_prune_matches_torch_prune_and_stays_zero():
    model = small_model()
    ref = small_model()
    masks = magnitude_prune(model, sparsity=0.95)
    assert set(masks) == {"0.weight", "3.weight"}
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == total - round(0.95 * total)
    # torch.nn.utils.prune.global_unstructured (random weights: no ties) prunes the same weights
    import torch.nn.utils.prune as prune

    prune.global_unstructured([(ref[0], "weight"), (ref[3], "weight")], pruning_method=prune.L1Unstructured, amount=0.95)
    assert torch.equal(masks["0.weight"], ref[0].weight_mask.bool())
    assert torch.equal(masks["3.weight"], ref[3].weight_mask.bool())
    params = dict(model.named_parameters())
    for n, m in masks.items():
        assert (params[n][~m] == 0).all() and (params[n][m] != 0).all()
    opt = MaskedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4),
                          masks_by_param(model, masks), originals="zeros")
    train(model, opt, 20)
    for n, m in masks.items():
        w = params[n]
        assert torch.equal(w[~m].view(torch.int32), torch.zeros_like(w[~m]).view(torch.int32))  # exactly +0
    assert (params["3.bias"] != 0).any()  # unmasked parameters train normally
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\]"):
        magnitude_prune(model, sparsity=1.2)
    with pytest.raises(ValueError, match="model has no module of types"):
        magnitude_prune(nn.ReLU())


def test_keep_topk_delta_keeps_exactly_k_updates():
    g = torch.Generator().manual_seed(2)
    originals = [torch.randn(50, generator=g), torch.randn(3, 7, generator=g)]
    params = [o + torch.randn(o.shape, generator=g) for o in originals]
    deltas = torch.cat([(p - o).abs().flatten() for p, o in zip(params, originals)])
    masks = keep_topk_delta_(params, originals, 10)
    changed = torch.cat([(p != o).flatten() for p, o in zip(params, originals)])
    assert int(changed.sum()) == 10
    assert deltas[changed].min() >= deltas[~changed].max()
    assert sum(int(m.sum()) for m in masks) == 10
