import copy

import pytest
import torch

import unlearnx as ux
from unlearnx.data.lm_batches import QADataset
from unlearnx.models.lm import build_lm
from unlearnx.models.lm_training import finetune_lm
from unlearnx.stats import expert_attribution


def retain_affinity(moe, model):
    batch = moe.retain_eval.collate(list(moe.retain_eval))
    return expert_attribution(model, [batch], progress=False).affinity()


@pytest.fixture(scope="module")
def moe(tiny_setup_class):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # A tiny Qwen2-MoE: 2 layers, 4 experts top-2 + a shared expert, 6 epochs.
        yield tiny_setup_class("moe", epochs=6, layers=2, hidden=32, heads=2, experts=4, top_k=2)
    finally:
        torch.set_num_threads(threads)


def run(moe, **hp):
    kw = {"lr": 1e-2, "epochs": 8, "batch_size": 8, **hp}
    return ux.unlearn(moe.model(), "uoe", forget=moe.forget, retain=moe.retain, tokenizer=moe.tok,
                      progress=False, **kw)


@pytest.mark.parametrize("base", ["ga", "graddiff", "npo"])
def test_uoe_changes_only_the_chosen_expert_slice(moe, base):
    res = run(moe, base=base, train_router=False)
    (layer, expert), = res.log["uoe_experts"]
    prefix = f"model.layers.{layer}.mlp.experts."
    before = dict(moe._model.named_parameters())
    touched = 0
    for n, p in res.model.named_parameters():
        if n in (prefix + "gate_up_proj", prefix + "down_proj"):
            others = [i for i in range(p.shape[0]) if i != expert]
            assert torch.equal(p[others], before[n][others]), n  # bit-exact through AdamW weight decay
            assert not torch.equal(p[expert], before[n][expert]), n
            touched += p[expert].numel()
        else:
            assert torch.equal(p, before[n]), n
    total = sum(p.numel() for p in res.model.parameters())
    assert res.log["touched_fraction"] == pytest.approx(touched / total)
    assert res.log["touched_fraction"] < 1 / 8  # one of 2 layers x 4 routed experts
    # the chosen expert is the forget set's top-affinity one at the original model
    f = QADataset(moe.forget, moe.tok)
    att = expert_attribution(moe._model, [f.collate(list(f))], progress=False)
    assert att.top_experts(1) == [(layer, expert)]
    f_nll, _ = moe.nll(res.model)
    f0, _ = moe.nll(moe._model)
    assert f_nll > f0 + 0.3, (f_nll, f0)
    assert "anchor_loss" in res.log


def test_uoe_keeps_retain_routing_close(moe):
    # layers=2: one expert in each of the two MoE layers, so layer 1's router sees a changed input
    res = run(moe, base="graddiff", train_router=False, layers=2)
    assert sorted(layer for layer, _ in res.log["uoe_experts"]) == [0, 1]
    a0, a1 = retain_affinity(moe, moe._model), retain_affinity(moe, res.model)
    assert torch.equal(a0[0], a1[0])  # layer 0's router input is untouched by any expert
    # layer 1's retain routing moves, within 0.1 per expert (measured 0.04 with GradDiff; 0.13 with GA)
    assert 0 < float((a0[1] - a1[1]).abs().max()) < 0.1


def test_anchor_loss_pulls_forget_routing_to_the_expert(moe):
    with_anchor = run(moe, base="ga", anchor=10.0)
    without = run(moe, base="ga", anchor=0.0)
    (layer, expert), = with_anchor.log["uoe_experts"]
    assert with_anchor.log["uoe_experts"] == without.log["uoe_experts"]
    assert "anchor_loss" not in without.log
    assert with_anchor.log["anchor_loss"][-1] < with_anchor.log["anchor_loss"][0]
    # only the chosen layer's router moves besides the expert slice
    before = dict(moe._model.named_parameters())
    moved = {n for n, p in with_anchor.model.named_parameters() if not torch.equal(p, before[n])}
    prefix = f"model.layers.{layer}.mlp."
    assert moved == {prefix + "gate.weight", prefix + "experts.gate_up_proj", prefix + "experts.down_proj"}
    f = QADataset(moe.forget, moe.tok)
    aff = lambda m: float(expert_attribution(m, [f.collate(list(f))], progress=False).affinity()[layer, expert])
    assert aff(with_anchor.model) > aff(moe._model)


def test_uoe_with_rmu_base_on_a_three_layer_moe(moe):
    model = build_lm("moe", tokenizer=moe.tok, layers=3, hidden=32, heads=2, experts=4, top_k=2)
    finetune_lm(model, QADataset(moe.qa["full"], moe.tok), epochs=6, lr=3e-3, batch_size=16, progress=False)
    three = copy.copy(moe)
    three._model = model
    f0, r0 = three.nll(model)
    res = run(three, base="rmu", steering="fixed", steering_coeff=20.0, alpha=100.0)
    (layer, _), = res.log["uoe_experts"]
    before = dict(model.named_parameters())
    moved = {n for n, p in res.model.named_parameters() if not torch.equal(p, before[n])}
    prefix = f"model.layers.{layer}.mlp."
    assert moved == {prefix + "gate.weight", prefix + "experts.gate_up_proj", prefix + "experts.down_proj"}
    f1, r1 = three.nll(res.model)
    # measured: forget 3.69 -> 4.24, retain 3.67 -> 3.99
    assert f1 > f0 + 0.2 and f1 - f0 > r1 - r0
    assert res.log["anchor_loss"][-1] < res.log["anchor_loss"][0]


def test_uoe_bad_inputs(moe):
    with pytest.raises(ValueError, match="base must be one of"):
        run(moe, base="wagle")
    with pytest.raises(ValueError, match="lora must be None for uoe"):
        run(moe, lora=True)
    with pytest.raises(ValueError, match="layers must be <= 2"):
        run(moe, layers=3)
    with pytest.raises(ValueError, match="anchor must be"):
        run(moe, anchor=-1.0)
