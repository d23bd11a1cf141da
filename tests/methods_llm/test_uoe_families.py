"""UOE on the other transformers-5 MoE families: Mixtral, OLMoE and DeepSeek-V3 (sigmoid router,
shared experts, a dense first decoder layer)."""
import pytest
import torch

import unlearnx as ux
from unlearnx.data.lm_batches import QADataset
from unlearnx.stats import expert_attribution
from unlearnx.stats.experts import find_moe_blocks

ARCHS = {"mixtral": {"layers": 2}, "olmoe": {"layers": 2}, "deepseek": {"layers": 3, "dense_layers": 1}}


@pytest.fixture(scope="module", params=list(ARCHS))
def fam(request, tiny_setup_class):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield request.param, tiny_setup_class(request.param, epochs=6, hidden=32, heads=2, experts=4, top_k=2,
                                              **ARCHS[request.param])
    finally:
        torch.set_num_threads(threads)


def test_uoe_trains_only_the_top_affinity_routed_expert_and_its_router(fam):
    arch, setup = fam
    res = ux.unlearn(setup.model(), "uoe", forget=setup.forget, retain=setup.retain, tokenizer=setup.tok,
                     base="graddiff", lr=1e-2, epochs=8, batch_size=8, progress=False)
    (layer, expert), = res.log["uoe_experts"]
    f = QADataset(setup.forget, setup.tok)
    att = expert_attribution(setup._model, [f.collate(list(f))], progress=False)
    assert att.top_experts(1) == [(layer, expert)]
    blk = find_moe_blocks(setup._model)[layer]
    fused = {f"{blk.name}.experts.gate_up_proj", f"{blk.name}.experts.down_proj"}
    before = dict(setup._model.named_parameters())
    moved = {n for n, p in res.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == fused | {f"{blk.name}.gate.weight"}
    if arch == "deepseek":  # shared experts exist, are always active, and are never trained
        assert blk.shared == f"{blk.name}.shared_experts"
        assert not any("shared_experts" in n for n in moved)
    touched = sum(before[n][expert].numel() for n in fused) + blk.router.weight.numel()
    assert res.log["touched_fraction"] == pytest.approx(touched / sum(p.numel() for p in res.model.parameters()))
    for n, p in res.model.named_parameters():
        if n in fused:
            others = [i for i in range(p.shape[0]) if i != expert]
            assert torch.equal(p[others], before[n][others]), n  # bit-exact through AdamW weight decay
    f0, r0 = setup.nll(setup._model)
    f1, r1 = setup.nll(res.model)
    assert f1 > f0 + 0.3 and f1 - f0 > r1 - r0, (arch, f0, f1, r0, r1)
    assert res.log["anchor_loss"][-1] < res.log["anchor_loss"][0]
