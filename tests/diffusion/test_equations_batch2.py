"""Unit tests of the key equations: DoCo's concept-preserving gradient surgery, SPM's facilitated
transport and membrane, Scissorhands' trimmed-connection count."""
import math

import pytest
import torch

from unlearnx.diffusion import ConditionedImages, tiny_class_model
from unlearnx.methods.diffusion.gradients import project_conflicting
from unlearnx.methods.diffusion.scissorhands import snip_sensitivity, trim_connections_
from unlearnx.methods.diffusion.spm import SPMLinear, transport_rate
from unlearnx.methods.masking import global_topk_masks


def test_doco_surgery_by_hand():
    g, r = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    out, hit = project_conflicting(g, r)  # g·r = -1, ‖r‖² = 2: g + 0.5 r
    assert hit and torch.equal(out, torch.tensor([0.5, 0.5]))
    out, hit = project_conflicting(g, -r)  # no conflict: unchanged
    assert not hit and torch.equal(out, g)


def test_doco_surgery_formula_random():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        g, r = torch.randn(50, generator=gen, dtype=torch.float64), torch.randn(50, generator=gen, dtype=torch.float64)
        out, hit = project_conflicting(g, r)
        if g.dot(r) < 0:
            assert hit
            torch.testing.assert_close(out, g - g.dot(r) / r.dot(r) * r)
            assert abs(float(out.dot(r))) < 1e-10  # the conflicting component is gone
        else:
            assert not hit and torch.equal(out, g)
    with pytest.raises(ValueError, match="one shape"):
        project_conflicting(torch.zeros(3), torch.zeros(4))


def test_spm_transport_scaling():
    concept = torch.tensor([[1.0, 0.0]])
    c75 = torch.tensor([0.75, math.sqrt(1 - 0.75 ** 2)])
    x = torch.stack([torch.stack([torch.tensor([0.0, 1.0]), torch.tensor([3.0, 0.0])]),   # holds the concept (cos 1)
                     torch.stack([torch.tensor([0.0, 1.0]), c75]),                      # best cos 0.75
                     torch.stack([torch.tensor([0.0, 1.0]), torch.tensor([0.0, -2.0])])])  # cos 0 at most
    gamma = transport_rate(x, concept, tau=0.5)
    torch.testing.assert_close(gamma, torch.tensor([1.0, 0.5, 0.0]))  # (s − τ)/(1 − τ) clipped to [0, 1]
    with pytest.raises(ValueError):
        transport_rate(x, concept, tau=1.0)


def test_spm_membrane_strength_follows_prompt():
    torch.manual_seed(0)
    base = torch.nn.Linear(2, 3)
    mem = SPMLinear(base, torch.tensor([[1.0, 0.0]]), tau=0.5)
    with torch.no_grad():
        mem.u.fill_(1.0)
    x = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # prompt 0 = the concept, prompt 1 orthogonal
    delta = (x @ mem.v).unsqueeze(-1) * mem.u
    out = mem(x)
    torch.testing.assert_close(out[0], base(x[0]) + delta[0])  # γ = 1: the full membrane
    torch.testing.assert_close(out[1], base(x[1]))             # γ = 0: passes untouched
    mem.mode = "off"
    torch.testing.assert_close(mem(x), base(x))


def test_scissorhands_trims_exactly_k_connections():
    torch.manual_seed(0)
    model = tiny_class_model(3, image_size=8, channels=1, block_out_channels=(8, 16))
    data = ConditionedImages(torch.rand(6, 1, 8, 8), [0, 0, 1, 1, 0, 1])
    scores = snip_sensitivity(model, data, batch_size=4)
    n = sum(s.numel() for s in scores.values())
    masks = global_topk_masks(scores, 0.03)
    before = {k: v.detach().clone() for k, v in model.unet.named_parameters()}
    trimmed = trim_connections_(model, masks, torch.Generator().manual_seed(0))
    assert trimmed == math.floor(0.03 * n) == sum(int(m.sum()) for m in masks.values())
    # only masked entries may change, and the kept ones are the most sensitive: every trimmed score >= every kept one
    for name, p in model.unet.named_parameters():
        assert torch.equal(p.detach()[~masks[name]], before[name][~masks[name]])
    lo = min(float(scores[k][m].min()) for k, m in masks.items() if m.any())
    hi = max(float(scores[k][~m].max()) for k, m in masks.items() if (~m).any())
    assert lo >= hi
