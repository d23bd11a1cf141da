import torch
import torch.nn as nn
import pytest

from unlearnx.exact import ExactStore, SISA, audit_directory
from unlearnx.exact.data import Arrays


def _pick(store, shard, slice_, n=2):
    manifest, _ = store.served()
    return manifest["shards"][shard]["slices"][slice_][:n]


def _from_scratch(store, shard, deleted):
    """Train shard `shard` from scratch on its original assignment minus `deleted`, same recipe."""
    slices = [[i for i in sl if i not in deleted] for sl in store.config["assignment"][shard]]
    full = Arrays.of(*_all_rows(store))
    data = full.select(i for sl in slices for i in sl)
    states = []
    model = store.engine.fresh_model(shard)
    store.engine.train_steps(shard, model, slices, data,
                             on_step=lambda r, m, c: states.append({k: v.clone() for k, v in m.state_dict().items()}))
    return states


def _all_rows(store):
    from unlearnx.exact.data import builtin_digits

    d = builtin_digits(seed=0)["train"]
    return d.x, d.y, d.ids


def test_delete_changes_only_affected_shards(sisa_dir):
    store = ExactStore.open(sisa_dir)
    before, _ = store.served()
    ids = _pick(store, 1, 1)
    store.delete(ids, requester="t")
    after, _ = store.served()
    for s in (0, 2):
        assert after["shards"][s] == before["shards"][s]
    b1, a1 = before["shards"][1]["checkpoints"], after["shards"][1]["checkpoints"]
    assert a1[0] == b1[0]  # before the affected slice: kept
    assert all(a1[r]["sha256"] != b1[r]["sha256"] for r in (1, 2))  # from the affected slice on: retrained
    assert after["shards"][1]["data"] != before["shards"][1]["data"]
    eff = store.ledger.requests()[-1].effect["shards"]
    assert [e["shard"] for e in eff] == [1] and eff[0]["retrained_from_slice"] == 1
    assert audit_directory(sisa_dir).ok


@pytest.mark.parametrize("slice_", [0, 2])
def test_delete_equals_training_from_scratch_bit_for_bit(sisa_dir, slice_):
    store = ExactStore.open(sisa_dir)
    ids = _pick(store, 2, slice_, n=3)
    original = store.ckpt.load(store.served()[0]["shards"][2]["checkpoints"][-1])[0]
    store.delete(ids, requester="t")
    served = store.served()[0]["shards"][2]["checkpoints"]
    expected = _from_scratch(store, 2, set(ids))
    for r, ckpt in enumerate(served):
        got = store.ckpt.load(ckpt)[0]
        assert got.keys() == expected[r].keys()
        assert all(torch.equal(got[k], expected[r][k]) for k in got), f"slice {r} differs from scratch"
    # The deletion really changed the final model (the equality above is not vacuous).
    assert not all(torch.equal(original[k], expected[-1][k]) for k in original)


def test_second_deletion_in_earlier_slice(sisa_dir):
    store = ExactStore.open(sisa_dir)
    first, second = _pick(store, 0, 2, n=1), _pick(store, 0, 0, n=1)
    store.delete(first, requester="a")
    store.delete(second, requester="b")
    served = store.served()[0]["shards"][0]["checkpoints"]
    expected = _from_scratch(store, 0, set(first + second))
    got = store.ckpt.load(served[-1])[0]
    assert all(torch.equal(got[k], expected[-1][k]) for k in got)
    assert [r.state for r in store.ledger.requests()] == ["applied", "applied"]


def _adam_train(model, dataset, generator):
    x, y = dataset.tensors
    if len(y) == 0:
        return
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(5):
        idx = torch.randperm(len(y), generator=generator)[:64]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


def test_custom_classifier_and_train_fn(digits, tmp_path):
    model_fn = lambda: nn.Linear(64, 10)  # noqa: E731
    store = ExactStore.create(tmp_path / "c", train=digits["train"], test=digits["test"], method="sisa",
                              shards=2, slices=2, model_fn=model_fn, train_fn=_adam_train)
    store.train()
    ids = store.served()[0]["shards"][0]["slices"][1][:2]
    store.delete(ids, requester="t")
    slices = [[i for i in sl if i not in ids] for sl in store.config["assignment"][0]]
    engine = SISA(seed=0, slices=2, model_fn=model_fn, train_fn=_adam_train, store=store.ckpt)
    model = engine.fresh_model(0)
    engine.train_steps(0, model, slices, digits["train"].select(i for sl in slices for i in sl))
    got = store.ckpt.load(store.served()[0]["shards"][0]["checkpoints"][-1])[0]
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
    store.close()
    with pytest.raises(ValueError, match="custom model"):
        ExactStore.open(tmp_path / "c")
    assert ExactStore.open(tmp_path / "c", model_fn=model_fn, train_fn=_adam_train).predict(
        torch.from_numpy(digits["test"].x)).shape == (len(digits["test"]),)


def test_aggregation_vote_and_mean_are_accurate(sisa_dir, digits):
    store = ExactStore.open(sisa_dir)
    x, y = (torch.from_numpy(a) for a in (digits["test"].x, digits["test"].y))
    accs = {}
    for agg in ("vote", "mean"):
        store.config["aggregation"] = agg
        accs[agg] = (store.predict(x) == y).float().mean().item()
    # 3 shards of ~380 digits each, two passes per slice: far above the 0.1 of chance.
    assert min(accs.values()) > 0.7, accs
    with pytest.raises(ValueError, match="x must be a 2-D"):
        store.predict(x[0])


def test_create_validates_arguments(digits, tmp_path):
    kw = dict(train=digits["train"])
    with pytest.raises(ValueError, match="method"):
        ExactStore.create(tmp_path / "a", method="sisa2", **kw)
    with pytest.raises(ValueError, match="shards"):
        ExactStore.create(tmp_path / "b", shards=0, **kw)
    with pytest.raises(ValueError, match="cannot fill"):
        ExactStore.create(tmp_path / "c", shards=100, slices=20, **kw)
    with pytest.raises(ValueError, match="aggregation"):
        ExactStore.create(tmp_path / "d", aggregation="max", **kw)
    with pytest.raises(ValueError, match="recipe"):
        ExactStore.create(tmp_path / "e", recipe={"epoch": 3}, **kw)
    with pytest.raises(FileNotFoundError, match="run init"):
        ExactStore.open(tmp_path / "nothing")
