from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from unlearnx.exact import (
    ExactStore, LoRALinear, audit_directory, cyclic_orders, simulate_deletion_rate, truncate_prefixes,
)


def test_deletion_deactivates_exactly_the_adapters_on_or_after_the_slice(s3t_dir):
    store = ExactStore.open(s3t_dir)
    before, _ = store.served()
    shard, hit_slice = 0, 1
    ids = before["shards"][shard]["slices"][hit_slice][:2]
    store.delete(ids, requester="t")
    after, _ = store.served()
    assert after["shards"][1:] == before["shards"][1:]
    assert after["backbone"] == before["backbone"]
    expected_off = []
    for b, (old, new) in enumerate(zip(before["shards"][shard]["sequences"], after["shards"][shard]["sequences"])):
        cut = old["order"].index(hit_slice)
        assert new["adapters"] == old["adapters"][:cut]  # same files: nothing retrained
        expected_off += [{"sequence": b, "position": k, "slice": old["order"][k]} for k in range(cut, len(old["adapters"]))]
        for a in old["adapters"][cut:]:
            assert not (Path(s3t_dir) / a["path"]).exists()  # deactivated adapters saw the ids: erased
    eff = store.ledger.requests()[-1].effect["shards"][0]
    assert eff["retrained"] is False
    key = lambda d: (d["sequence"], d["position"], d["slice"])  # noqa: E731
    assert sorted(eff["adapters_deactivated"], key=key) == sorted(expected_off, key=key)
    # Served: the longest surviving prefix (cyclic rotation starting right after the hit slice).
    lengths = [len(s["adapters"]) for s in after["shards"][shard]["sequences"]]
    assert max(lengths) == store.config["slices"] - 1
    net = store.shard_models()[shard]
    assert int(net.head1.active.sum()) == max(lengths)
    assert audit_directory(s3t_dir).ok
    assert store.status()["requests_without_retraining"] == 1


def test_surviving_prefix_equals_training_from_scratch(s3t_dir, digits):
    store = ExactStore.open(s3t_dir)
    ids = store.served()[0]["shards"][1]["slices"][2][:3]
    store.delete(ids, requester="t")
    entry = store.served()[0]["shards"][1]
    slices = [[i for i in sl if i not in ids] for sl in store.config["assignment"][1]]
    data = digits["train"].select(i for sl in slices for i in sl)
    store.engine.set_backbone(store.served()[0]["backbone"])
    for b, seq in enumerate(entry["sequences"]):
        fresh = store.engine.train_sequence(1, b, slices, data)
        p = len(seq["adapters"])
        assert [a["sha256"] for a in fresh[:p]] == [a["sha256"] for a in seq["adapters"]]
        # Positions from the hit slice on do differ from the originals (they saw the ids).
    store.close()


def test_retrains_only_when_no_sequence_survives(s3t_dir):
    store = ExactStore.open(s3t_dir)
    before, _ = store.served()
    R = store.config["slices"]
    ids = [before["shards"][2]["slices"][j][0] for j in range(R)]  # one id in every slice of shard 2
    store.delete(ids, requester="t")
    after, _ = store.served()
    eff = store.ledger.requests()[-1].effect["shards"][0]
    assert eff["retrained"] is True
    assert [len(s["adapters"]) for s in after["shards"][2]["sequences"]] == [R] * len(before["shards"][2]["sequences"])
    assert after["shards"][:2] == before["shards"][:2]
    slices = [[i for i in sl if i not in ids] for sl in store.config["assignment"][2]]
    fresh = store.engine.train_shard(2, slices, store._shard_data(after["shards"][2]))
    assert fresh["sequences"] == [{"order": s["order"], "adapters": s["adapters"]} for s in after["shards"][2]["sequences"]]
    assert audit_directory(s3t_dir).ok
    assert store.status()["shard_retrainings"] == 1


def test_lora_linear_masks_and_isolation():
    torch.manual_seed(0)
    base = nn.Linear(7, 5)
    layer = LoRALinear(base, n_adapters=3, rank=2, alpha=4.0)
    x = torch.randn(11, 7)
    g = torch.Generator().manual_seed(1)
    for k in range(3):
        layer.reset_adapter(k, g)
    layer.active[:] = True
    assert torch.allclose(layer(x), base(x))  # B = 0: fresh adapters change nothing
    with torch.no_grad():
        for k in range(3):
            layer.B[k].normal_()
    layer.active[:] = torch.tensor([True, False, True])
    expected = base(x) + 2.0 * sum((x @ layer.A[k].t()) @ layer.B[k].t() for k in (0, 2))
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert not any(p.requires_grad for p in base.parameters())
    layer.A[2].requires_grad_(True)
    layer.B[2].requires_grad_(True)
    layer(x).sum().backward()
    assert layer.A[0].grad is None and layer.B[2].grad is not None
    with pytest.raises(ValueError, match="n_adapters"):
        LoRALinear(base, n_adapters=0)


def test_truncation_and_deletion_rate():
    orders = cyclic_orders(4, 4)
    assert orders[1] == [1, 2, 3, 0]
    assert truncate_prefixes(orders, [4, 4, 4, 4], [2]) == [2, 1, 0, 3]
    assert truncate_prefixes(orders, [1, 4, 4, 4], [3]) == [1, 2, 1, 0]
    s3t = simulate_deletion_rate(shards=5, slices=6, trials=100, seed=0)
    sisa = simulate_deletion_rate(shards=5, slices=6, orders=[list(range(6))], trials=100, seed=0)
    assert s3t.shape == (100,) and (s3t >= 0).all()
    # A single sequence fails at the first hit on slice 0 of any shard (p = 1/6 per request);
    # six rotations need all six slices of one shard hit.
    assert abs(sisa.mean() - 5.0) < 2.0
    assert s3t.mean() > 3 * sisa.mean()
    with pytest.raises(ValueError, match="sequences"):
        cyclic_orders(3, 4)
    assert np.array_equal(s3t, simulate_deletion_rate(shards=5, slices=6, trials=100, seed=0))
