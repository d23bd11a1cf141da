import pytest
import torch

from unlearnx.models.lm import tiny_moe
from unlearnx.ops.router_stats import moe_router_stats_reference
from unlearnx.stats import expert_attribution
from unlearnx.stats.experts import find_moe_blocks

V, E = 40, 4
FORGET_IDS, RETAIN_IDS = range(10, 20), range(20, 30)


def batch(ids, pad_last=2):
    g = torch.Generator().manual_seed(len(ids) + pad_last)
    x = torch.tensor(list(ids))[torch.randint(0, len(ids), (3, 7), generator=g)]
    mask = torch.ones_like(x)
    mask[0, -pad_last:] = 0
    x[0, -pad_last:] = 0  # padding token: would route like anything, must be excluded
    return {"input_ids": x, "attention_mask": mask}


def steered_model(j, top_k=2):
    """Layer 0 sees only the embedding direction (+v forget ids, -v retain ids); its router scores v for expert j."""
    model = tiny_moe(V, hidden=16, layers=2, heads=2, experts=E, top_k=top_k, seed=0)
    layer0 = model.model.layers[0]
    with torch.no_grad():
        layer0.self_attn.o_proj.weight.zero_()
        v = torch.randn(16, generator=torch.Generator().manual_seed(1))
        emb = model.model.embed_tokens.weight
        emb[list(FORGET_IDS)] = v
        emb[list(RETAIN_IDS)] = -v
        gate = layer0.mlp.gate.weight
        gate.zero_()
        gate[j] = 2.0 * v / v.norm()
        model.model.layers[1].mlp.gate.weight.zero_()  # layer 1 uniform: never preferred
    return model


@pytest.mark.parametrize("j", [0, 3])
def test_hand_built_router_picks_expert_j(j):
    model = steered_model(j)
    att = expert_attribution(model, [batch(FORGET_IDS)], retain=[batch(RETAIN_IDS)], progress=False)
    assert att.top_experts(1) == [(0, j)]
    assert att.layers == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert att.shared == ["model.layers.0.mlp.shared_expert", "model.layers.1.mlp.shared_expert"]
    aff = att.affinity()
    assert float(aff[0, j]) > 0.5 and torch.allclose(aff[1], torch.full((E,), 1 / E))
    # retain tokens avoid j; padding is excluded (3*7 - 2 tokens per group)
    assert float(att.affinity("retain")[0, j]) < 1 / E
    assert att.tokens.tolist() == [19.0, 19.0]
    assert float(att.stats[0, 0, j, 0]) == 19.0  # every forget token routes to j


@pytest.mark.parametrize("top_k", [1, 2])
def test_stats_equal_one_hot_reference(top_k):
    model = tiny_moe(V, hidden=16, layers=2, heads=2, experts=E, top_k=top_k, seed=3)
    f, r = batch(range(1, 40)), batch(range(1, 40), pad_last=4)
    logits = {}
    hooks = [b.router.register_forward_hook(lambda m, i, o, n=b.name: logits.setdefault(n, []).append(o[0].detach()))
             for b in find_moe_blocks(model)]
    att = expert_attribution(model, [f], retain=[r], progress=False)
    for h in hooks:
        h.remove()
    flags = torch.cat([(f["attention_mask"] * 1).reshape(-1), (r["attention_mask"] * 2).reshape(-1)])
    for i, name in enumerate(att.layers):
        want = moe_router_stats_reference(torch.cat(logits[name]).double(), flags, top_k, True)
        assert torch.allclose(att.stats[i].double(), want, atol=1e-5)
    # affinity = mean router probability over forget tokens, by hand
    probs = torch.cat(logits[att.layers[1]])[: f["input_ids"].numel()].softmax(-1)
    keep = f["attention_mask"].reshape(-1).bool()
    assert torch.allclose(att.affinity()[1], probs[keep].mean(0), atol=1e-6)


def test_forget_flag_key_splits_a_mixed_batch():
    model = steered_model(2)
    fb, rb = batch(FORGET_IDS), batch(RETAIN_IDS)
    mixed = {k: torch.cat([fb[k], rb[k]]) for k in fb}
    mixed["is_forget"] = torch.tensor([1, 1, 1, 0, 0, 0])
    a = expert_attribution(model, [mixed], forget_flag="is_forget", progress=False)
    b = expert_attribution(model, [fb], retain=[rb], progress=False)
    assert torch.allclose(a.stats, b.stats, atol=1e-5)


def test_bad_inputs():
    model = tiny_moe(V, hidden=16, layers=1, heads=2, experts=E, seed=0)
    with pytest.raises(TypeError, match="model must be"):
        expert_attribution("x", [])
    with pytest.raises(KeyError, match="forget_flag"):
        expert_attribution(model, [batch(FORGET_IDS)], forget_flag="nope", progress=False)
    with pytest.raises(TypeError, match="input_ids"):
        expert_attribution(model, [torch.zeros(2, 3)], progress=False)
    with pytest.raises(ValueError, match="no MoE block"):
        expert_attribution(torch.nn.Linear(2, 2), [], progress=False)
