import pytest
import torch
from torch import nn

from unlearnx.models.lm import build_lm, tiny_moe
from unlearnx.ops.router_stats import moe_router_stats_reference
from unlearnx.stats import expert_attribution
from unlearnx.stats.experts import find_moe_blocks

V, E = 40, 4
FORGET_IDS, RETAIN_IDS = range(10, 20), range(20, 30)
# Each MoE family with two MoE layers; DeepSeek-V3 has a dense first decoder layer before them.
FAMILIES = {"moe": {"layers": 2}, "mixtral": {"layers": 2}, "olmoe": {"layers": 2},
            "deepseek": {"layers": 3, "dense_layers": 1}}
SHARED = {"moe": "shared_expert", "mixtral": None, "olmoe": None, "deepseek": "shared_experts"}


def family(arch, top_k=2, seed=0):
    return build_lm(arch, vocab_size=V, hidden=16, heads=2, experts=E, top_k=top_k, seed=seed, **FAMILIES[arch])


def batch(ids, pad_last=2):
    g = torch.Generator().manual_seed(len(ids) + pad_last)
    x = torch.tensor(list(ids))[torch.randint(0, len(ids), (3, 7), generator=g)]
    mask = torch.ones_like(x)
    mask[0, -pad_last:] = 0
    x[0, -pad_last:] = 0  # padding token: would route like anything, must be excluded
    return {"input_ids": x, "attention_mask": mask}


def steered_model(j, arch="moe"):
    """The first MoE layer sees only the embedding direction (+v forget ids, -v retain ids); its router
    scores v for expert j. Attention outputs (and any dense MLP before it) are zeroed, so the
    residual stream there is the embedding."""
    model = family(arch)
    first, second = find_moe_blocks(model)
    with torch.no_grad():
        for layer in model.model.layers[: int(first.name.split(".")[2]) + 1]:
            layer.self_attn.o_proj.weight.zero_()
            if layer.mlp is not first.block:
                layer.mlp.down_proj.weight.zero_()
        v = torch.randn(16, generator=torch.Generator().manual_seed(1))
        emb = model.model.embed_tokens.weight
        emb[list(FORGET_IDS)] = v
        emb[list(RETAIN_IDS)] = -v
        gate = first.router.weight
        gate.zero_()
        gate[j] = 2.0 * v / v.norm()
        second.router.weight.zero_()  # the other MoE layer is uniform: never preferred
    return model


@pytest.mark.parametrize("arch", list(FAMILIES))
@pytest.mark.parametrize("j", [0, 3])
def test_hand_built_router_picks_expert_j(j, arch):
    model = steered_model(j, arch)
    att = expert_attribution(model, [batch(FORGET_IDS)], retain=[batch(RETAIN_IDS)], progress=False)
    assert att.top_experts(1) == [(0, j)]
    first = FAMILIES[arch]["layers"] - 2
    assert att.layers == [f"model.layers.{first}.mlp", f"model.layers.{first + 1}.mlp"]
    assert att.shared == [None if SHARED[arch] is None else f"{n}.{SHARED[arch]}" for n in att.layers]
    aff = att.affinity()
    # softmax routers: p_j ~ 1; DeepSeek's sigmoid scores: s_j ~ 1 against 1/2 for the others, p_j ~ 0.4
    assert float(aff[0, j]) > 0.35 and torch.allclose(aff[1], torch.full((E,), 1 / E))
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


@pytest.mark.parametrize("arch", ["mixtral", "olmoe", "deepseek"])
@pytest.mark.parametrize("top_k", [1, 2])
def test_family_stats_equal_one_hot_of_the_routers_own_choice(arch, top_k):
    """Per family, by hand from the captured router outputs (logits, top-k weights, top-k indices):
    counts / gate weights are one_hot of the router's own selection and weights, probabilities are
    softmax(z) (Mixtral, OLMoE) or sigmoid(z) normalized over the experts (DeepSeek-V3)."""
    model = family(arch, top_k=top_k, seed=3)
    f, r = batch(range(1, 40)), batch(range(1, 40), pad_last=4)
    outs = {}
    hooks = [b.router.register_forward_hook(lambda m, i, o, n=b.name: outs.setdefault(n, []).append(o))
             for b in find_moe_blocks(model)]
    att = expert_attribution(model, [f], retain=[r], progress=False)
    for h in hooks:
        h.remove()
    flags = torch.cat([(f["attention_mask"] * 1).reshape(-1), (r["attention_mask"] * 2).reshape(-1)])
    scale = model.config.routed_scaling_factor if arch == "deepseek" else 1.0
    for i, name in enumerate(att.layers):
        logits, weights, index = (torch.cat([o[k] for o in outs[name]]).double() for k in range(3))
        scores = logits.sigmoid() if arch == "deepseek" else logits.softmax(-1)
        probs = scores / scores.sum(-1, keepdim=True)
        hot = torch.nn.functional.one_hot(index.long(), E).double()  # [T, k, E]
        per_token = torch.stack([hot.sum(1), (hot * weights[..., None] / scale).sum(1), probs, probs**2], -1)
        want = torch.stack([per_token[flags == g].sum(0) for g in (1, 2)])
        assert torch.allclose(att.stats[i].double(), want, atol=1e-5), (arch, name)
    assert att.tokens.tolist() == [19.0, 17.0]


def test_module_list_experts_layout():
    """transformers 4.x layout: nn.Linear gate returning logits, an nn.ModuleList of expert MLPs."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.top_k = 2
            self.gate = nn.Linear(8, E, bias=False)
            self.experts = nn.ModuleList(nn.Sequential(nn.Linear(8, 16), nn.SiLU(), nn.Linear(16, 8)) for _ in range(E))

        def forward(self, x):
            tokens = x.reshape(-1, 8)
            w, idx = self.gate(tokens).softmax(-1).topk(self.top_k, -1)
            w = w / w.sum(-1, keepdim=True)
            out = sum(w[:, k, None] * torch.stack([self.experts[int(e)](t) for t, e in zip(tokens, idx[:, k])])
                      for k in range(self.top_k))
            return out.reshape(x.shape)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.mlp, self.head = nn.Embedding(V, 8), Block(), nn.Linear(8, V)

        def forward(self, input_ids, attention_mask=None):
            return self.head(self.mlp(self.embed(input_ids)))

    torch.manual_seed(0)
    model = LM()
    (blk,) = find_moe_blocks(model)
    assert (blk.top_k, blk.normalize_topk, blk.scoring, blk.shared) == (2, True, "softmax", None)
    f = batch(range(1, 40))
    att = expert_attribution(model, [f], progress=False)
    logits = model.mlp.gate(model.embed(f["input_ids"])).reshape(-1, E).detach()
    want = moe_router_stats_reference(logits.double(), f["attention_mask"].reshape(-1), 2, True)
    assert torch.allclose(att.stats[0].double(), want, atol=1e-5)
    params = blk.expert_parameters(2)
    assert [n for n, _, _ in params] == [f"mlp.experts.2.{n}" for n, _ in model.mlp.experts[2].named_parameters()]
    assert all(m is None for _, _, m in params)
    assert [p for _, p, _ in params] == list(model.mlp.experts[2].parameters())
    with pytest.raises(ValueError, match="expert must be"):
        blk.expert_parameters(E)
    del model.mlp.experts[3]
    with pytest.raises(ValueError, match="has 3 modules"):
        blk.expert_parameters(0)


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_fused_expert_parameters_are_one_slice(arch):
    model = family(arch)
    blk = find_moe_blocks(model)[1]
    params = blk.expert_parameters(1)
    assert [n for n, _, _ in params] == [f"{blk.name}.experts.gate_up_proj", f"{blk.name}.experts.down_proj"]
    for _, p, mask in params:
        assert mask.shape == p.shape and mask[1].all() and int(mask.sum()) == p[1].numel()
    assert blk.scoring == ("sigmoid" if arch == "deepseek" else "softmax")
    model.config.scoring_func = "sqrtsoftplus"
    with pytest.raises(ValueError, match="scoring function"):
        find_moe_blocks(model)


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
